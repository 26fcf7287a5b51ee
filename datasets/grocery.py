"""`grocery`: the shared GroceryStoreDataset packages (31 products, 9 brands) as a manifest.

Train and val photos keep the dataset's own split; the one catalogue ("iconic") image per product is
marked `source: "iconic"` (the reference to enroll) and kept in `train`. Every file is checked by the
safe decoder and copied unchanged into the build, so the manifest is self-contained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from markguard.datasets.build import BuildReport, Skipped, Tile, finish_build, prepare_output, write_atomic
from markguard.datasets.manifest import Label, ManifestRow
from markguard.vision.decode import read_image, sniff_format
from markguard.vision.errors import ImageError

__all__ = ["GroceryOptions", "brand_of", "build_grocery"]

# Brands whose name is more than one word; every other product's brand is its first word.
MULTIWORD_BRANDS = ("God-Morgon",)


@dataclass(frozen=True)
class GroceryOptions:
    seed: int = 0  # nothing is random here; kept so every build command takes a seed


def brand_of(product: str) -> str:
    """The brand of a product folder name: the words before the first product word (`God-Morgon-Apple-Juice` → `God Morgon`)."""
    for brand in MULTIWORD_BRANDS:
        if product.startswith(brand + "-"):
            return brand.replace("-", " ")
    return product.split("-", 1)[0]


def build_grocery(out: Path, *, source: Path, opts: GroceryOptions, force: bool = False,
                  progress: bool = True) -> tuple[BuildReport, dict]:
    """Build the grocery manifest from `source` (the `grocery-packages` folder) into `out`."""
    prepare_output(out, fingerprint={"command": "grocery", "options": opts.__dict__, "source": str(source)}, force=force)
    report = BuildReport(out=out, command="grocery", rows=[])
    inputs: list[tuple[Path, str, str, str]] = []  # path, split, product, source
    if not (source / "train" / "Packages").is_dir():
        report.skipped.append(Skipped(str(source), "missing or not a grocery-packages folder (no train/Packages)"))
    for split, base in (("train", "train"), ("val", "val"), ("train", "iconic")):
        root = source / base / "Packages"
        if not root.is_dir():
            if root.parent.exists() or base != "val":
                report.skipped.append(Skipped(str(root), "folder missing"))
            continue
        for path in sorted(root.glob("*/*/*")):
            if path.suffix.lower() != ".jpg":
                continue
            if base == "iconic" and not path.stem.endswith("_Iconic"):
                continue
            inputs.append((path, split, path.parent.name, "iconic" if base == "iconic" else "photo"))
    tiles: dict[str, list[Tile]] = {}
    for path, split, product, kind in tqdm(inputs, desc="grocery", unit="image", disable=None if progress else True):
        try:
            image = read_image(path)
            data = path.read_bytes()
        except (ImageError, OSError) as exc:
            report.skipped.append(Skipped(str(path), str(exc)))
            continue
        ext = sniff_format(data).value.lower().replace("jpeg", "jpg")
        rel = f"images/{kind}/{split}/{product}/{path.stem}.{ext}"
        write_atomic(out / rel, data)
        report.rows.append(ManifestRow(image=rel, brand=brand_of(product), product=product, label=Label.GENUINE,
                                       split=split, source=kind))
        row = tiles.setdefault(product, [])
        if kind == "iconic":
            row.insert(0, Tile(image, f"{product} (iconic)"))
        elif len(row) < 5:
            row.append(Tile(image, f"{split} photo"))
    sheet = [tiles[p] for p in sorted(tiles)][:: max(1, len(tiles) // 8)][:8]
    title = f"grocery: {len({r.product for r in report.rows})} products, {len(report.rows)} images"
    return report, finish_build(report, sheet=sheet, title=title)
