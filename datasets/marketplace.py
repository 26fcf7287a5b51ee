"""`marketplace`: a simulated marketplace feed with planted counterfeit rings, to test seller-network detection.

Real GroceryStore photos are the genuine goods. Honest sellers photograph their own items (each listing a
fresh crop and exposure of a real photo) and some reuse the product's one catalogue ("stock") photo;
resellers of genuine goods do the same and give each item's genuine serial. Lone counterfeiters and rings
sell counterfeits: a real photo whose packaging colours a registered counterfeit transform has moved, with
the counterfeiter's own mark (a real brand icon, edited by a counterfeit transform) stamped on it. A ring
shares a few master photos, reposted re-encoded and slightly cropped, one cloned serial per brand it fakes
(printed on a label and given in the feed's `serial` field), its stamp across several brands and a title
template. The planted truth is written to `truth.json`, apart from the feed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from markguard.datasets.build import BuildRefused, prepare_output, write_atomic
from markguard.datasets.compose import render_label
from markguard.datasets.grocery import brand_of
from markguard.datasets.marks import MarkSpec, load_icons, mark_spec, render_mark
from markguard.datasets.serials import serial_format
from markguard.datasets.transforms import create_transform

__all__ = ["MarketplaceOptions", "build_marketplace", "FEED_FILE", "TRUTH_FILE", "KNOWN_FAKES_FILE"]

FEED_FILE = "feed.jsonl"
TRUTH_FILE = "truth.json"
KNOWN_FAKES_FILE = "known_fakes.jsonl"  # counterfeits brands confirmed before the feed starts (to enroll)
SIDE = 320  # px, the longer side of every listing photo

# Titles honest sellers write: each is shared by many sellers, so it is a house style, not a fingerprint.
HONEST_TITLES = (
    "{brand} {product}",
    "{product} ({brand})",
    "{brand} {product} {size}",
    "Fresh {product} - {brand}",
    "{product} {size} | {brand}",
    "{brand} {product}, best before {day}",
)
_HYPE = ("ORIGINAL", "WHOLESALE", "EXPORT", "FACTORY", "BULK", "HOT", "DEAL", "LOT", "CHEAP", "SALE", "NEW",
         "PREMIUM", "STOCK", "OUTLET", "IMPORT", "LUXURY", "TOP", "BEST", "CLEARANCE", "DIRECT")
_MARKS = ("★", "✔", "!!", "##", "~", "::", "++", ">>", "**", "%")
_COUNTERFEIT_EDITS = ("degraded_print", "colour_shift", "element_shift", "stroke_weight", "aspect_distortion")


@dataclass(frozen=True)
class MarketplaceOptions:
    seed: int = 1
    honest_sellers: int = 160
    resellers: int = 25
    lone_counterfeiters: int = 15
    rings: int = 10
    ring_sellers: tuple[int, int] = (4, 8)  # sellers per ring, inclusive
    listings_per_seller: tuple[int, int] = (6, 12)  # inclusive
    stock_photo_rate: float = 0.15  # share of honest listings showing the product's catalogue photo
    known_fake_rings: float = 0.5  # share of rings one of whose photos a brand confirmed before the feed
    weeks: int = 12
    start: str = "2026-09-01"


@dataclass
class _Listing:
    seller: str
    role: str
    brand: str
    product: str  # the GroceryStore product (folder) name, as enrolled
    title: str
    image: np.ndarray | bytes  # pixels, or bytes kept as they are (a stock photo)
    at: dt.datetime
    serial: str | None = None
    ring: str | None = None
    counterfeit: bool = False
    stock: bool = False  # the product's catalogue photo
    quality: int = 90


def _products(source: Path) -> tuple[dict[str, list[Path]], dict[str, Path]]:
    photos: dict[str, list[Path]] = {}
    for split in ("train", "val"):
        for path in sorted((source / split / "Packages").glob("*/*/*.jpg")):
            photos.setdefault(path.parent.name, []).append(path)
    iconic = {p.parent.name: p for p in sorted((source / "iconic" / "Packages").glob("*/*/*_Iconic.jpg"))}
    products = {k: v for k, v in photos.items() if k in iconic}
    if len(products) < 4:
        raise BuildRefused(f"{source}: expected a grocery-packages folder (train/val/iconic Packages)")
    return products, iconic


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _fit(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    scale = SIDE / max(h, w)
    return cv2.resize(image, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)


def _own_photo(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A seller's own shot of an item: a fresh framing (zoom 70-95 %), exposure and white balance."""
    h, w = image.shape[:2]
    zoom = rng.uniform(0.7, 0.95)
    ch, cw = round(h * zoom), round(w * zoom)
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = image[y : y + ch, x : x + cw].astype(np.float32)
    out = out * rng.uniform(0.85, 1.15) * rng.uniform(0.93, 1.07, size=3) + rng.uniform(-12, 12)
    return _fit(np.clip(out, 0, 255).astype(np.uint8))


def _repost(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A reused photo as reposted: up to 4 % cropped from each side (re-encoding comes with saving)."""
    h, w = image.shape[:2]
    t, b, left, r = (int(rng.integers(0, max(1, round(0.04 * s)) + 1)) for s in (h, h, w, w))
    return _fit(image[t : h - b, left : w - r])


def _paste(photo: np.ndarray, rgba: np.ndarray, *, x: int, y: int) -> np.ndarray:
    h, w = rgba.shape[:2]
    h, w = min(h, photo.shape[0] - y), min(w, photo.shape[1] - x)
    if h <= 0 or w <= 0:
        return photo
    alpha = rgba[:h, :w, 3:4].astype(np.float32) / 255
    region = photo[y : y + h, x : x + w].astype(np.float32)
    photo[y : y + h, x : x + w] = (rgba[:h, :w, :3] * alpha + region * (1 - alpha)).astype(np.uint8)
    return photo


def _counterfeit_photo(image: np.ndarray, *, stamp: np.ndarray, serial: str | None,
                       rng: np.random.Generator) -> np.ndarray:
    """A counterfeit of the product in `image`: its packaging colours moved by the registered
    `colour_shift` transform, the counterfeiter's stamp printed on it, and a serial label."""
    photo = _fit(image).copy()
    h, w = photo.shape[:2]
    y0, y1, x0, x1 = h // 6, h - h // 6, w // 6, w - w // 6
    label = np.dstack([photo[y0:y1, x0:x1], np.full((y1 - y0, x1 - x0), 255, np.uint8)])
    color = tuple(int(c) for c in label[..., :3].reshape(-1, 3).mean(0))
    spec = MarkSpec(brand="label", color=color, svg=None, text=None, font="", layout="icon")
    shifted = create_transform("colour_shift")(spec, label, strength=float(rng.uniform(0.4, 1.0)), rng=rng)
    photo[y0:y1, x0:x1] = shifted[..., :3]
    sh, sw = stamp.shape[:2]
    photo = _paste(photo, stamp, x=int(rng.integers(0, max(1, w - sw))), y=int(rng.integers(0, max(1, h // 3))))
    if serial is not None:
        tag = render_label(serial, height=max(14, h // 12), rng=rng)
        photo = _paste(photo, tag, x=max(0, w - tag.shape[1] - 4), y=max(0, h - tag.shape[0] - 4))
    return photo


def _stamp(icon_index: int, rng: np.random.Generator) -> np.ndarray:
    """A counterfeiter's own mark: a real brand icon, edited by one registered counterfeit transform."""
    icons = load_icons()
    icon = icons[icon_index % len(icons)]
    spec = mark_spec(icon, layout="icon")
    mark = render_mark(spec, height=44)
    edit = _COUNTERFEIT_EDITS[int(rng.integers(len(_COUNTERFEIT_EDITS)))]
    return create_transform(edit)(spec, mark, strength=float(rng.uniform(0.3, 0.8)), rng=rng)


def _display(product: str) -> str:
    brand = brand_of(product)
    return product[len(brand.replace(" ", "-")) + 1 :].replace("-", " ") or product


def _title(template: str, *, product: str, rng: np.random.Generator) -> str:
    return template.format(brand=brand_of(product), product=_display(product),
                           size=f"{int(rng.choice([250, 500, 750, 1000]))} {rng.choice(['ml', 'g'])}",
                           day=f"{int(rng.integers(1, 29))}/{int(rng.integers(1, 13))}", n=int(rng.integers(2, 60)))


def _hype_template(rng: np.random.Generator, taken: set[str]) -> str:
    """A counterfeiter's own title style, distinct from every other one drawn."""
    while True:
        words = " ".join(str(w) for w in rng.choice(_HYPE, size=2, replace=False))
        mark = str(rng.choice(_MARKS))
        shape = int(rng.integers(3))
        template = (f"{mark} {words} {mark} {{brand}} {{product}} x{{n}}" if shape == 0 else
                    f"{{brand}} {{product}} {mark}{words}{mark} {{n}} pcs" if shape == 1 else
                    f"{words} {{product}} by {{brand}} {mark} lot {{n}}")
        if template not in taken:
            taken.add(template)
            return template


def _encode(listing: _Listing) -> bytes:
    if isinstance(listing.image, bytes):
        return listing.image
    buf = io.BytesIO()
    Image.fromarray(listing.image).save(buf, format="JPEG", quality=listing.quality, optimize=False)
    return buf.getvalue()


def build_marketplace(out: Path, *, source: Path, opts: MarketplaceOptions, force: bool = False) -> dict[str, Any]:
    """Write `feed.jsonl`, `images/`, `known_fakes.jsonl` and `truth.json` into `out`; return the stats."""
    if opts.rings < 1 or opts.ring_sellers[0] < 2 or opts.ring_sellers[0] > opts.ring_sellers[1]:
        raise BuildRefused("rings need at least 2 sellers each (--rings >= 1)")
    prepare_output(out, fingerprint={"command": "marketplace", "options": dataclasses.asdict(opts),
                                     "source": str(source)}, force=force)
    products, iconic = _products(Path(source))
    names = sorted(products)
    rng = np.random.default_rng(opts.seed)
    start = dt.datetime.fromisoformat(opts.start).replace(tzinfo=dt.UTC)
    span = dt.timedelta(weeks=opts.weeks)
    cache: dict[Path, np.ndarray] = {}

    def photo(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = _read(path)
        return cache[path]

    def when(lo: float = 0.0, hi: float = 1.0) -> dt.datetime:
        return start + span * float(rng.uniform(lo, hi))

    def count() -> int:
        return int(rng.integers(opts.listings_per_seller[0], opts.listings_per_seller[1] + 1))

    listings: list[_Listing] = []
    roles: dict[str, str] = {}
    seller_numbers = rng.permutation(10_000)
    seller_count = 0

    def new_seller(role: str) -> str:
        nonlocal seller_count
        seller = f"seller-{int(seller_numbers[seller_count]):04d}"
        seller_count += 1
        roles[seller] = role
        return seller

    def genuine_serial(product: str) -> str:
        return serial_format(brand_of(product)).make(rng)

    for role, sellers in (("honest", opts.honest_sellers), ("reseller", opts.resellers)):
        for _ in range(sellers):
            seller = new_seller(role)
            styles = rng.choice(HONEST_TITLES, size=2, replace=False)
            stock = rng.random() < 0.5  # half the sellers use catalogue photos at all
            for _ in range(count()):
                product = str(rng.choice(names))
                title = _title(str(rng.choice(styles)), product=product, rng=rng)
                serial = genuine_serial(product) if role == "reseller" or rng.random() < 0.2 else None
                uses_stock = stock and rng.random() < opts.stock_photo_rate * 2
                if uses_stock:  # the catalogue file as it is, or as the platform re-encoded it
                    data = iconic[product].read_bytes()
                    image: np.ndarray | bytes = data if rng.random() < 0.6 else _fit(_read(iconic[product]))
                else:
                    image = _own_photo(photo(products[product][int(rng.integers(len(products[product])))]), rng)
                listings.append(_Listing(seller, role, brand_of(product), product, title, image, when(), serial,
                                         stock=uses_stock, quality=int(rng.integers(80, 96))))

    templates: set[str] = set()
    icon_numbers = rng.permutation(len(load_icons()))
    for i in range(opts.lone_counterfeiters):
        seller = new_seller("lone_counterfeiter")
        stamp = _stamp(int(icon_numbers[i]), rng)
        template = _hype_template(rng, templates)
        for _ in range(count()):
            product = str(rng.choice(names))
            serial = serial_format(brand_of(product)).make(rng, valid=False)
            source_photo = photo(products[product][int(rng.integers(len(products[product])))])
            image = _counterfeit_photo(_own_photo(source_photo, rng), stamp=stamp, serial=serial, rng=rng)
            listings.append(_Listing(seller, "lone_counterfeiter", brand_of(product), product,
                                     _title(template, product=product, rng=rng), image, when(), serial,
                                     counterfeit=True, quality=int(rng.integers(70, 92))))

    brands = sorted({brand_of(p) for p in names})
    rings: list[dict[str, Any]] = []
    known_fakes: list[dict[str, str]] = []
    for r in range(opts.rings):
        ring_id = f"ring-{r + 1:02d}"
        members = [new_seller("ring") for _ in range(int(rng.integers(opts.ring_sellers[0], opts.ring_sellers[1] + 1)))]
        ring_brands = [str(b) for b in rng.choice(brands, size=min(len(brands), int(rng.integers(2, 4))), replace=False)]
        ring_products = [p for p in names if brand_of(p) in ring_brands]
        stamp = _stamp(int(icon_numbers[opts.lone_counterfeiters + r]), rng)
        serials = {b: serial_format(b).make(rng) for b in ring_brands}  # one genuine serial, cloned
        masters = []
        for _ in range(int(rng.integers(3, 7))):
            product = str(rng.choice(ring_products))
            source_photo = photo(products[product][int(rng.integers(len(products[product])))])
            masters.append((product, _counterfeit_photo(_own_photo(source_photo, rng), stamp=stamp,
                                                        serial=serials[brand_of(product)], rng=rng)))
        template = _hype_template(rng, templates)
        lo = float(rng.uniform(0.0, 0.6))
        window = (lo, min(1.0, lo + float(rng.uniform(0.25, 0.5))))
        for seller in members:
            for _ in range(count()):
                product, master = masters[int(rng.integers(len(masters)))]
                title = _title(template if rng.random() < 0.85 else str(rng.choice(HONEST_TITLES)), product=product,
                               rng=rng)
                serial = serials[brand_of(product)] if rng.random() < 0.7 else None
                listings.append(_Listing(seller, "ring", brand_of(product), product, title, _repost(master, rng),
                                         when(*window), serial, ring=ring_id, counterfeit=True,
                                         quality=int(rng.integers(60, 91))))
        if rng.random() < opts.known_fake_rings:
            product, master = masters[0]
            rel = f"known_fakes/{ring_id}.jpg"
            write_atomic(out / rel, _encode(_Listing("", "", "", "", "", master, start)))
            known_fakes.append({"brand": brand_of(product), "product": product, "image": rel})
        rings.append({"ring": ring_id, "sellers": sorted(members), "brands": ring_brands, "template": template,
                      "serials": {b: s for b, s in sorted(serials.items())}, "masters": len(masters),
                      "first_listed": (start + span * window[0]).isoformat()})

    listings.sort(key=lambda item: (item.at, item.seller))
    rows, truth_listings = [], {}
    for n, item in enumerate(listings, 1):
        listing_id = f"L{n:06d}"
        rel = f"images/{listing_id}.jpg"
        write_atomic(out / rel, _encode(item))
        row = {"listing_id": listing_id, "seller_id": item.seller, "brand": item.brand, "product": item.product,
               "title": item.title, "image": rel, "listed_at": item.at.isoformat(timespec="seconds")}
        if item.serial is not None:
            row["serial"] = item.serial
        rows.append(row)
        truth_listings[listing_id] = {"role": item.role, "counterfeit": item.counterfeit, "ring": item.ring,
                                      "stock_photo": item.stock}
    write_atomic(out / FEED_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    write_atomic(out / KNOWN_FAKES_FILE, "".join(json.dumps(k) + "\n" for k in known_fakes).encode())
    truth = {"seed": opts.seed, "rings": rings, "sellers": dict(sorted(roles.items())), "listings": truth_listings}
    write_atomic(out / TRUTH_FILE, (json.dumps(truth, indent=1, ensure_ascii=False) + "\n").encode())
    by_role: dict[str, int] = {}
    for role in roles.values():
        by_role[role] = by_role.get(role, 0) + 1
    stats = {"listings": len(rows), "sellers": len(roles), "sellers_by_role": dict(sorted(by_role.items())),
             "rings": len(rings), "ring_sellers": sum(len(r["sellers"]) for r in rings),
             "counterfeit_listings": sum(1 for i in listings if i.counterfeit), "known_fakes": len(known_fakes),
             "stock_photo_listings": sum(1 for i in listings if i.stock)}
    write_atomic(out / "stats.json", (json.dumps(stats, indent=1) + "\n").encode())
    return stats
