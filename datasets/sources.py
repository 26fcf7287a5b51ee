"""Where the real data lives (`../shared/data` beside the repository, or `--source`/`MARKGUARD_DATA`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["default_data_root", "product_surfaces"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def default_data_root() -> Path:
    """`$MARKGUARD_DATA`, else `../shared/data` relative to the repository root (or the working folder)."""
    from markguard.serving.settings import get_settings

    return get_settings().data


def product_surfaces(root: Path) -> list[Path]:
    """Real photos to print marks on: clothing photos and grocery-package training photos, sorted."""
    found: list[Path] = []
    for sub, pattern in (("clothing/train", "*/*"), ("grocery-packages/train/Packages", "*/*/*")):
        base = root / sub
        if base.is_dir():
            found.extend(p for p in base.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(found)
