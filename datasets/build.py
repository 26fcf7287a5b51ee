"""What every dataset build shares: its output folder, its report of skips, its stats and contact sheet.

A build folder holds `build.json` (the command and options that made it), `manifest.jsonl`,
`stats.json` (counts and every skipped input with its reason), `contact_sheet.png` and `images/`.
A folder holding another build (or anything else) is refused unless `force`, so builds never mix.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from markguard.datasets.fonts import load_font
from markguard.datasets.manifest import MANIFEST_NAME, Label, ManifestRow, write_manifest
from markguard.vision.errors import MarkguardError

__all__ = ["BuildRefused", "Skipped", "Tile", "BuildReport", "prepare_output", "finish_build", "save_png", "save_jpeg", "write_atomic"]

BUILD_FILE = "build.json"
STATS_FILE = "stats.json"
SHEET_FILE = "contact_sheet.png"
IMAGES_DIR = "images"
_OWNED = (BUILD_FILE, STATS_FILE, SHEET_FILE, MANIFEST_NAME, IMAGES_DIR)


class BuildRefused(MarkguardError):
    """The output folder already holds something other than this build (use `--force`)."""


@dataclass(frozen=True)
class Skipped:
    """An input left out of the build and why (shown to the user and kept in `stats.json`)."""

    path: str
    reason: str


@dataclass(frozen=True)
class Tile:
    """One picture on the contact sheet with its caption; counterfeits get a red frame."""

    image: np.ndarray
    caption: str
    label: Label = Label.GENUINE


@dataclass
class BuildReport:
    """The result of a build: where it went, what it holds, what it skipped."""

    out: Path
    command: str
    rows: list[ManifestRow]
    skipped: list[Skipped] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """Counts by split, label, source and transform, and the skipped inputs with reasons."""
        brands_by_split: dict[str, set[str]] = {}
        for row in self.rows:
            brands_by_split.setdefault(row.split, set()).add(row.brand)
        return {
            "command": self.command,
            "images": len(self.rows),
            "brands": len({r.brand for r in self.rows}),
            "products": len({(r.brand, r.product) for r in self.rows if r.product}),
            "by_split": dict(sorted(Counter(r.split for r in self.rows).items())),
            "brands_by_split": {k: len(v) for k, v in sorted(brands_by_split.items())},
            "by_label": dict(sorted(Counter(str(r.label) for r in self.rows).items())),
            "by_source": dict(sorted(Counter((r.source or "-").split(":")[0] for r in self.rows).items())),
            "by_transform": dict(sorted(Counter(r.transform for r in self.rows if r.transform).items())),
            "with_serial": sum(1 for r in self.rows if r.serial),
            "skipped": len(self.skipped),
            "skipped_inputs": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def prepare_output(out: Path, *, fingerprint: dict[str, Any], force: bool) -> Path:
    """Make `out` ready for this build; refuse a folder holding a different build or other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BuildRefused(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        previous = _read_fingerprint(out / BUILD_FILE)
        if previous != fingerprint and not force:
            what = "a different build" if previous is not None else "other files"
            raise BuildRefused(f"{out} already holds {what}; choose another --out or pass --force")
        for name in _OWNED:  # only what a build writes is removed, never a user's other files
            target = out / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (out / BUILD_FILE).write_text(json.dumps(fingerprint, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    return out


def _read_fingerprint(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def finish_build(
    report: BuildReport, *, sheet: Sequence[Sequence[Tile]], title: str
) -> dict[str, Any]:
    """Write the manifest, the stats and the contact sheet; return the stats."""
    rows = sorted(report.rows, key=lambda r: r.image)
    write_manifest(report.out / MANIFEST_NAME, rows)
    stats = report.stats()
    (report.out / STATS_FILE).write_text(json.dumps(stats, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    save_png(report.out / SHEET_FILE, contact_sheet(sheet, title=title))
    return stats


def save_png(path: Path, image: np.ndarray) -> None:
    """Encode without metadata so that equal pixels give equal bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=6)
    write_atomic(path, buf.getvalue())


def save_jpeg(path: Path, image: np.ndarray, *, quality: int = 92) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0, optimize=False)
    write_atomic(path, buf.getvalue())


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename, so a crash never leaves half an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


TILE = 144  # px, the side of one contact-sheet picture
CAPTION = 30  # px of caption under each picture


def contact_sheet(groups: Sequence[Sequence[Tile]], *, title: str) -> np.ndarray:
    """Rows of tiles (one group a row: the genuine first, then its counterfeits), each captioned."""
    groups = [g for g in groups if g] or [[Tile(np.full((8, 8, 3), 255, np.uint8), "(empty build)")]]
    columns = max(len(g) for g in groups)
    pad, head = 6, 28
    width = pad + columns * (TILE + pad)
    height = head + len(groups) * (TILE + CAPTION + pad) + pad
    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), title, fill=(0, 0, 0), font=load_font("DejaVuSans-Bold", 14))
    small = load_font("DejaVuSans", 10)
    for r, group in enumerate(groups):
        y = head + r * (TILE + CAPTION + pad)
        for c, tile in enumerate(group):
            x = pad + c * (TILE + pad)
            img = Image.fromarray(tile.image)
            img.thumbnail((TILE - 4, TILE - 4), Image.Resampling.BILINEAR)
            colour = (200, 30, 30) if tile.label is Label.COUNTERFEIT else (30, 150, 60)
            draw.rectangle([x, y, x + TILE - 1, y + TILE - 1], outline=colour, width=2)
            sheet.paste(img, (x + (TILE - img.width) // 2, y + (TILE - img.height) // 2))
            for i, line in enumerate(_wrap(tile.caption, 26)[:2]):
                draw.text((x + 2, y + TILE + 2 + 12 * i), line, fill=colour, font=small)
    return np.asarray(sheet)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [ln[:width] for ln in (*lines, line) if ln]
