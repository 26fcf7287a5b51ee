"""The fonts wordmarks, labels and contact sheets are set in: the TrueType files matplotlib ships.

matplotlib is a project dependency, so the same font files exist on every machine that installs
markguard, which keeps rendered text (and so every build) byte-reproducible without system fonts.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import matplotlib
from PIL import ImageFont

__all__ = ["WORDMARK_FONTS", "font_file", "load_font"]

# Display faces for wordmarks: sans, serif, mono, display and Computer Modern, upright and styled.
WORDMARK_FONTS = (
    "DejaVuSans-Bold",
    "DejaVuSans",
    "DejaVuSerif-Bold",
    "DejaVuSerif",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono-Bold",
    "STIXGeneralBol",
    "STIXGeneral",
    "cmss10",
    "cmr10",
    "cmb10",
)


def font_file(name: str) -> Path:
    """Path of one of matplotlib's bundled fonts by file stem (`DejaVuSans-Bold`)."""
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"
    if not path.is_file():
        raise FileNotFoundError(f"font {name!r} not found at {path}")
    return path


@cache
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """A Pillow font object, cached since wordmarks are set thousands of times per build."""
    return ImageFont.truetype(str(font_file(name)), size=size)
