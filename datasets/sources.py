"""Where the real data lives (`../shared/data` beside the repository, or `--source`/`MARKGUARD_DATA`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_root", "product_surfaces"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def default_data_root() -> Path:
    """`$MARKGUARD_DATA`, else `../shared/data` relative to the repository root (or the working folder)."""
    env = os.environ.get("MARKGUARD_DATA")
    if env:
        return Path(env)
    beside_repo = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if beside_repo.is_dir():
        return beside_repo
    return Path.cwd().parent / "shared" / "data"


def product_surfaces(root: Path) -> list[Path]:
    """Real photos to print marks on: clothing photos and grocery-package training photos, sorted."""
    found: list[Path] = []
    for sub, pattern in (("clothing/train", "*/*"), ("grocery-packages/train/Packages", "*/*/*")):
        base = root / sub
        if base.is_dir():
            found.extend(p for p in base.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(found)
