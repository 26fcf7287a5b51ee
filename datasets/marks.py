"""Real brand marks, rendered offline: simple-icons SVGs (official colours) and wordmarks set in fonts.

Icons come from the PyPI package `simple-icons-pack` (a redistribution of the npm `simple-icons`
SVGs and metadata, CC0 packaging; the marks remain their owners' trademarks). SVGs are rasterised
by resvg black on white and the PNG goes through the safe decoder; its darkness becomes the alpha.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import resvg_py
import simple_icons_pack
from PIL import Image, ImageDraw

from markguard.datasets.fonts import WORDMARK_FONTS, load_font
from markguard.datasets.splits import unit_hash
from markguard.vision.decode import decode_image
from markguard.vision.errors import ImageError, MarkguardError

__all__ = ["BrandIcon", "MarkSpec", "RenderError", "load_icons", "icon_mask", "text_mask", "render_mark", "mark_spec"]

LAYOUTS = ("lockup", "icon", "wordmark")


class RenderError(MarkguardError):
    """An SVG or a wordmark that does not render to a visible mark."""


@dataclass(frozen=True)
class BrandIcon:
    """One simple-icons entry: the brand's name, official colour and single-path SVG."""

    slug: str
    title: str
    hex: str
    svg: str

    @property
    def color(self) -> tuple[int, int, int]:
        return _hex_rgb(self.hex)


@dataclass(frozen=True)
class MarkSpec:
    """Everything needed to render a brand's genuine mark, so a counterfeit can re-render a part of it."""

    brand: str
    color: tuple[int, int, int]
    svg: str | None
    text: str | None
    font: str
    layout: str  # lockup (icon beside wordmark) | icon | wordmark

    @property
    def has_text(self) -> bool:
        """True when the rendered mark shows the wordmark (text transforms need one)."""
        return bool(self.text) and self.layout != "icon"


@cache
def load_icons() -> tuple[BrandIcon, ...]:
    """Every icon in the installed simple-icons set, sorted by slug (a stable order for seeding)."""
    icons = []
    for name in dir(simple_icons_pack):
        if name.startswith("SI_"):
            icon = getattr(simple_icons_pack, name)
            icons.append(BrandIcon(slug=icon.slug, title=icon.title, hex=icon.hex, svg=icon.svg))
    return tuple(sorted(icons, key=lambda i: i.slug))


def _hex_rgb(value: str) -> tuple[int, int, int]:
    value = value.lstrip("#")
    if len(value) != 6:
        return (0, 0, 0)
    return (int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16))


def luminance(color: tuple[int, int, int]) -> float:
    """Relative luminance in [0, 1] (Rec. 709 weights on the gamma-encoded values; enough for contrast)."""
    r, g, b = color
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255.0


@cache
def icon_mask(svg: str, *, height: int) -> np.ndarray:
    """Coverage of an SVG mark as an (H, W) uint8 array cropped to its ink, `height` pixels tall."""
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff", height=int(height * 1.25))
        rgb = decode_image(bytes(png))
    except (ValueError, ImageError) as exc:
        raise RenderError(f"SVG does not render ({str(exc)[:80]})") from None
    ink = 255 - rgb.min(axis=2)
    return _fit_height(_crop(ink), height)


def text_mask(text: str, *, font: str, height: int) -> np.ndarray:
    """Coverage of `text` set in `font`, cropped to its ink and scaled to `height` pixels tall."""
    face = load_font(font if text.isascii() else "DejaVuSans-Bold", 2 * height)
    x0, y0, x1, y1 = face.getbbox(text)
    canvas = Image.new("L", (x1 - x0 + 8, y1 - y0 + 8), 0)
    ImageDraw.Draw(canvas).text((4 - x0, 4 - y0), text, fill=255, font=face)
    return _fit_height(_crop(np.asarray(canvas)), height)


def _crop(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask > 8)
    if len(xs) == 0:
        raise RenderError("renders no visible ink")
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _fit_height(mask: np.ndarray, height: int) -> np.ndarray:
    h, w = mask.shape
    scale = height / h
    size = (max(1, round(w * scale)), height)
    return cv2.resize(mask, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def render_mark(spec: MarkSpec, *, height: int = 96) -> np.ndarray:
    """The mark as an (H, W, 4) uint8 RGBA array in its colour on a transparent ground."""
    parts = []
    if spec.layout in ("lockup", "icon") and spec.svg:
        parts.append(icon_mask(spec.svg, height=height))
    if spec.layout in ("lockup", "wordmark") and spec.text:
        parts.append(text_mask(spec.text, font=spec.font, height=round(height * (0.55 if parts else 1.0))))
    if not parts:
        raise RenderError(f"{spec.brand}: nothing to render for layout {spec.layout}")
    gap = max(2, height // 6)
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    mask = np.zeros((height, width), np.uint8)
    x = 0
    for part in parts:
        y = (height - part.shape[0]) // 2
        mask[y : y + part.shape[0], x : x + part.shape[1]] = part
        x += part.shape[1] + gap
    return colorize(mask, spec.color)


def colorize(mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    rgba = np.empty((*mask.shape, 4), np.uint8)
    rgba[..., :3] = color
    rgba[..., 3] = mask
    return rgba


def mark_spec(icon: BrandIcon, *, seed: int = 0, layout: str | None = None) -> MarkSpec:
    """The brand's genuine mark: its layout and wordmark font fixed by the brand name (and seed)."""
    if layout is None:
        u = unit_hash("layout", seed, icon.title)
        layout = "lockup" if u < 0.5 else ("icon" if u < 0.75 else "wordmark")
    font = WORDMARK_FONTS[int(unit_hash("font", seed, icon.title) * len(WORDMARK_FONTS))]
    return MarkSpec(brand=icon.title, color=icon.color, svg=icon.svg, text=icon.title, font=font, layout=layout)


def with_changes(spec: MarkSpec, **changes: object) -> MarkSpec:
    """A copy of `spec` with some fields changed (what a counterfeiter re-draws)."""
    return dataclasses.replace(spec, **changes)
