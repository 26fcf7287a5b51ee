"""`grozi`: GroZi-120 in-store video frames (120 US grocery products) as a real-photo yardstick.

Evaluation only: the frames come without a licence file and no training set holds these products,
so the build is refused as training or calibration data (`training.data.refuse_evaluation_only`).

Protocol, mirroring how brands and listings meet: per product, `refs_per_product` frames (chosen
by a hash of the seed and the file name, so the same seed picks the same frames) are the brand's
enrolled references (`split: ref`, `source: iconic`, as grocery's catalogue images are), and every
other frame of the product is a listing photo to score (`split: query`, `source: grozi120:ID/FILE`).
`make_eval_set(items, split="query")` then enrolls all 120 products' references and queries the rest.

The source names neither products nor brands (folders 0–119). `PRODUCTS` names each product by
the mark legible on its frames, read by eye from the frames; the brand is that mark where several
products carry the same one (Campbell's soups, Nabisco's crackers and cookies, Vicks' cold
remedies...), so a claim of another product of the same brand is a look-alike. Seven products
whose mark cannot be read at these resolutions are their own brand, named `GroZi NNN`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from markguard.datasets.build import BuildReport, Skipped, Tile, finish_build, prepare_output, write_atomic
from markguard.datasets.manifest import Label, ManifestRow
from markguard.datasets.splits import unit_hash
from markguard.vision.decode import read_image, sniff_format
from markguard.vision.errors import ImageError

__all__ = ["GroziOptions", "PRODUCTS", "SOURCE_PREFIX", "REF_SPLIT", "QUERY_SPLIT", "brand_of", "product_name",
           "is_grozi_row", "build_grozi"]

SOURCE_PREFIX = "grozi120"  # every query row's source starts with it; the training guard looks for it
REF_SPLIT, QUERY_SPLIT = "ref", "query"
MAX_REFS = 8

# folder id -> (brand, product), read from the frames. Brand groups: Campbell's (87, 109, 110),
# Nabisco (76, 103, 106, 118: its corner flag is printed on each), Vicks (7, 48, 62), Cheerios (3, 94),
# Clorox (12, 13), Pepperidge Farm (69, 70), Pepto-Bismol (95, 96), Pringles (34, 35), Ritter Sport
# (66, 115), Rockstar (47, 112), Trojan (100, 101), Tylenol (59, 71). None: unread, its own brand.
PRODUCTS: dict[int, tuple[str | None, str]] = {
    0: ("ReNu", "ReNu contact lens solution"), 1: ("Chex Mix", "Chex Mix Traditional"),
    2: ("Gardetto's", "Gardetto's snack mix"), 3: ("Cheerios", "Cheerios"), 4: ("Extra", "Extra gum"),
    5: ("Doublemint", "Doublemint gum"), 6: ("Big Red", "Big Red gum"), 7: ("Vicks", "Vicks DayQuil"),
    8: ("Cheez-It", "Cheez-It crackers"), 9: ("Hershey's", "Hershey's milk chocolate"), 10: ("Twix", "Twix"),
    11: ("Snickers", "Snickers"), 12: ("Clorox", "Clorox bleach"), 13: ("Clorox", "Clorox 2 for colors"),
    14: ("Gatorade", "Gatorade"), 15: ("Snyder's", "Snyder's Olde Tyme pretzels"), 16: (None, "unread dark bottle"),
    17: ("Motrin", "Motrin"), 18: ("Neosporin", "Neosporin"), 19: ("Salsitas", "Salsitas tortilla chips"),
    20: ("Tic Tac", "Tic Tac mints"), 21: ("Dentyne", "Dentyne Ice"), 22: ("Certs", "Certs mints"),
    23: ("Bayer", "Bayer aspirin"), 24: ("Cup Noodles", "Cup Noodles chicken"), 25: ("Windex", "Windex"),
    26: (None, "unread black canister"), 27: ("Ziploc", "Ziploc sandwich bags"), 28: ("Aleve", "Aleve"),
    29: ("Kit Kat", "Kit Kat king size"), 30: ("Reese's", "Reese's Pieces"), 31: ("Kleenex", "Kleenex tissues"),
    32: ("ChapStick", "ChapStick"), 33: ("Tide", "Tide detergent"), 34: ("Pringles", "Pringles sour cream & onion"),
    35: ("Pringles", "Pringles (light can)"), 36: ("Starburst", "Starburst"), 37: ("Skittles", "Skittles"),
    38: ("Claritin", "Claritin"), 39: ("French's", "French's classic yellow mustard"), 40: ("Formula 409", "Formula 409"),
    41: ("Monster", "Monster Energy"), 42: ("Mentos", "Mentos"), 43: ("Tapatío", "Tapatío hot sauce"),
    44: (None, "unread brown box"), 45: ("Band-Aid", "Band-Aid flexible fabric"), 46: (None, "unread yellow lip-care card"),
    47: ("Rockstar", "Rockstar diet energy drink"), 48: ("Vicks", "Vicks NyQuil cough"), 49: ("Crunch", "Nestlé Crunch"),
    50: ("Lay's", "Lay's Classic"), 51: ("Arm & Hammer", "Arm & Hammer baking soda"),
    52: ("Martinelli's", "Martinelli's apple juice"), 53: ("Coca-Cola", "Diet Coke"), 54: ("Sprite", "Sprite"),
    55: ("Propel", "Propel fitness water"), 56: ("Aviator", "Aviator playing cards"), 57: ("Act II", "Act II Butter Lover's"),
    58: ("Dr Pepper", "Dr Pepper"), 59: ("Tylenol", "Tylenol PM"), 60: ("Red Bull", "Red Bull"),
    61: ("Blistex", "Blistex Silk & Shine"), 62: ("Vicks", "Vicks NyQuil"), 63: (None, "unread red chocolate box"),
    64: ("Lindt", "Lindt Excellence 70%"), 65: ("Haribo", "Haribo Gold-Bears"), 66: ("Ritter Sport", "Ritter Sport white"),
    67: ("Toblerone", "Toblerone"), 68: (None, "unread yellow box"), 69: ("Pepperidge Farm", "Pepperidge Farm Chocolate Chunk"),
    70: ("Pepperidge Farm", "Pepperidge Farm Milano"), 71: ("Tylenol", "Tylenol (red box)"),
    72: ("Starbucks", "Starbucks Frappuccino"), 73: ("Yoo-hoo", "Yoo-hoo"), 74: ("Bull's-Eye", "Bull's-Eye BBQ sauce"),
    75: ("Symphony", "Hershey's Symphony"), 76: ("Nabisco", "Nilla wafers"), 77: ("Oberto", "Oberto beef jerky"),
    78: ("David", "David sunflower seeds"), 79: ("Hunt's", "Hunt's tomato sauce"), 80: ("Kotex", "Kotex Lightdays"),
    81: ("Always", "Always pads"), 82: ("Lipton", "Lipton tea"), 83: ("Soft Scrub", "Soft Scrub"), 84: ("Raid", "Raid"),
    85: ("Shout", "Shout triple-acting"), 86: ("Gillette", "Gillette Foamy"), 87: ("Campbell's", "Campbell's tomato soup"),
    88: ("Vivarin", "Vivarin"), 89: ("Chef Boyardee", "Chef Boyardee ravioli"), 90: ("LifeStyles", "LifeStyles"),
    91: ("Crystal Geyser", "Crystal Geyser water"), 92: ("Luna", "Luna bar"), 93: ("Kellogg's", "Kellogg's Raisin Bran"),
    94: ("Cheerios", "Honey Nut Cheerios"), 95: ("Pepto-Bismol", "Pepto-Bismol bottle"),
    96: ("Pepto-Bismol", "Pepto-Bismol chewables box"), 97: ("Tabasco", "Tabasco"), 98: ("Alka-Seltzer", "Alka-Seltzer Plus cold"),
    99: ("Jack Link's", "Jack Link's stick"), 100: ("Trojan", "Trojan"), 101: ("Trojan", "Trojan Enz"),
    102: ("Colgate", "Colgate toothbrush"), 103: ("Nabisco", "Wheat Thins"), 104: ("Mountain Dew", "Mountain Dew"),
    105: (None, "unread red box (FROGS)"), 106: ("Nabisco", "Chips Ahoy"), 107: ("Jif", "Jif peanut butter"),
    108: ("Glade", "Glade powder fresh"), 109: ("Campbell's", "Campbell's chicken soup"), 110: ("Campbell's", "Campbell's Chunky"),
    111: ("A1", "A1 steak sauce"), 112: ("Rockstar", "Rockstar energy drink"), 113: ("Kodak", "Kodak Elite Chrome"),
    114: ("Tostitos", "Tostitos Scoops"), 115: ("Ritter Sport", "Ritter Sport cappuccino"), 116: ("Ruffles", "Ruffles"),
    117: ("Ben & Jerry's", "Ben & Jerry's vanilla"), 118: ("Nabisco", "Vegetable Thins"), 119: ("Yoplait", "Yoplait original"),
}


@dataclass(frozen=True)
class GroziOptions:
    seed: int = 0
    refs_per_product: int = 3  # frames per product enrolled as references; the others are queries

    def __post_init__(self) -> None:
        if not 1 <= self.refs_per_product <= MAX_REFS:
            raise ValueError(f"refs_per_product must lie in 1..{MAX_REFS}, got {self.refs_per_product}")


def brand_of(pid: int) -> str:
    """The brand of a GroZi folder id: the mark read on its frames, or `GroZi NNN` when unread."""
    brand = PRODUCTS[pid][0]
    return brand if brand is not None else f"GroZi {pid:03d}"


def product_name(pid: int) -> str:
    """The product key: the folder id (unique) and what the frames show."""
    return f"{pid:03d} {PRODUCTS[pid][1]}"


def is_grozi_row(row: ManifestRow) -> bool:
    """Whether a manifest row comes from a GroZi build (its queries carry `source: grozi120:...`)."""
    return (row.source or "").startswith(SOURCE_PREFIX + ":")


def build_grozi(out: Path, *, source: Path, opts: GroziOptions, force: bool = False,
                progress: bool = True) -> tuple[BuildReport, dict]:
    """Build the GroZi yardstick from `source` (the `grozi120-insitu` folder) into `out`."""
    prepare_output(out, fingerprint={"command": "grozi", "options": opts.__dict__, "source": str(source)}, force=force)
    report = BuildReport(out=out, command="grozi", rows=[])
    folders: list[tuple[int, list[Path]]] = []
    if not source.is_dir():
        report.skipped.append(Skipped(str(source), "missing or not a folder"))
    else:
        for entry in sorted(source.iterdir(), key=lambda p: p.name):
            if not entry.is_dir() or entry.is_symlink():
                continue
            if not entry.name.isdigit() or int(entry.name) not in PRODUCTS:
                report.skipped.append(Skipped(str(entry), "not a GroZi-120 product folder (0..119)"))
                continue
            frames = sorted(p for p in entry.iterdir() if p.suffix.lower() == ".png" and p.is_file()
                            and not p.is_symlink())
            folders.append((int(entry.name), frames))
    folders.sort()
    tiles: dict[int, list[Tile]] = {}
    for pid, frames in tqdm(folders, desc="grozi", unit="product", disable=None if progress else True):
        decoded = []
        for path in frames:
            try:
                image = read_image(path)
                data = path.read_bytes()
            except (ImageError, OSError) as exc:
                report.skipped.append(Skipped(str(path), str(exc)))
                continue
            decoded.append((path, image, data))
        if len(decoded) <= opts.refs_per_product:
            report.skipped.append(Skipped(str(source / str(pid)), f"{len(decoded)} readable frames: too few for "
                                          f"{opts.refs_per_product} references and a query"))
            continue
        order = sorted(decoded, key=lambda d: (unit_hash("grozi-ref", opts.seed, pid, d[0].name), d[0].name))
        refs = {d[0].name for d in order[: opts.refs_per_product]}
        for path, image, data in decoded:
            split = REF_SPLIT if path.name in refs else QUERY_SPLIT
            ext = sniff_format(data).value.lower().replace("jpeg", "jpg")
            rel = f"images/{split}/{pid:03d}/{path.stem}.{ext}"
            write_atomic(out / rel, data)
            report.rows.append(ManifestRow(
                image=rel, brand=brand_of(pid), product=product_name(pid), label=Label.GENUINE, split=split,
                source="iconic" if split == REF_SPLIT else f"{SOURCE_PREFIX}:{pid}/{path.name}"))
            row = tiles.setdefault(pid, [])
            if split == REF_SPLIT:
                row.insert(0, Tile(image, f"{brand_of(pid)} ref"))
            elif len(row) < opts.refs_per_product + 4:
                row.append(Tile(image, f"{pid:03d} query"))
    sheet = [tiles[p] for p in sorted(tiles)][:: max(1, len(tiles) // 10)][:10]
    title = (f"grozi: {len(tiles)} products, {len({r.brand for r in report.rows})} brands, "
             f"{sum(r.split == REF_SPLIT for r in report.rows)} references, "
             f"{sum(r.split == QUERY_SPLIT for r in report.rows)} queries (evaluation only)")
    return report, finish_build(report, sheet=sheet, title=title)
