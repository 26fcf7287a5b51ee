"""`brandmarks`: clean renders of real brand marks, for brand diversity in the embedder's training.

Per brand: the simple-icons mark in its official colour on light and dark grounds at several sizes,
the brand name set in several fonts, the brand's genuine mark (as `synth` prints it) and a few
counterfeit edits of it. Splits are brand-disjoint.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from markguard.datasets.build import BuildReport, Skipped, Tile, finish_build, prepare_output, save_png
from markguard.datasets.fonts import WORDMARK_FONTS
from markguard.datasets.manifest import Label, ManifestRow
from markguard.datasets.marks import (
    BrandIcon,
    RenderError,
    colorize,
    icon_mask,
    load_icons,
    luminance,
    mark_spec,
    render_mark,
    text_mask,
    with_changes,
)
from markguard.datasets.splits import split_for, unit_hash
from markguard.datasets.transforms import TRANSFORMS, transform_names

__all__ = ["BrandmarkOptions", "build_brandmarks"]

LIGHT, DARK = (248, 248, 246), (24, 24, 28)


@dataclass(frozen=True)
class BrandmarkOptions:
    """What `markguard datasets brandmarks` renders; every field goes into `build.json`."""

    brands: int = 1000  # 0: every icon in the set
    sizes: tuple[int, ...] = (64, 128, 224)  # px, square canvases
    fonts: int = 3  # wordmark fonts per brand
    counterfeits: int = 2  # counterfeit edits of the brand's mark per brand
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "brand"


def _on_ground(rgba: np.ndarray, *, size: int, ground: tuple[int, int, int], fill: float = 0.8) -> np.ndarray:
    """The mark centred on a square canvas of `ground`, fitting `fill` of its width and 60 % of its height."""
    h, w = rgba.shape[:2]
    scale = min(size * fill / w, size * 0.6 / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    mark = cv2.resize(rgba, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = ground
    y, x = (size - nh) // 2, (size - nw) // 2
    a = mark[..., 3:4].astype(np.float32) / 255
    canvas[y : y + nh, x : x + nw] = canvas[y : y + nh, x : x + nw] * (1 - a) + mark[..., :3] * a
    return canvas.round().astype(np.uint8)


def _ink_for(color: tuple[int, int, int], ground: tuple[int, int, int]) -> tuple[int, int, int]:
    """The official colour, or its one-colour reversal (black or white) where it would not show."""
    if abs(luminance(color) - luminance(ground)) >= 0.3:
        return color
    return (255, 255, 255) if luminance(ground) < 0.5 else (0, 0, 0)


def build_brandmarks(out: Path, *, opts: BrandmarkOptions, force: bool = False, progress: bool = True,
                     icons: Sequence[BrandIcon] | None = None) -> tuple[BuildReport, dict]:
    """Render the brand-mark set into `out` (from `icons`, default the installed simple-icons set)."""
    fingerprint = {"command": "brandmarks", "options": {**opts.__dict__, "sizes": list(opts.sizes)},
                   "transforms": sorted(TRANSFORMS)}
    prepare_output(out, fingerprint=fingerprint, force=force)
    report = BuildReport(out=out, command="brandmarks", rows=[])
    pool = sorted(icons if icons is not None else load_icons(), key=lambda i: unit_hash("brand", opts.seed, i.slug))
    chosen = pool if opts.brands <= 0 else pool[: opts.brands]
    sheet: list[list[Tile]] = []
    seen: set[str] = set()
    for icon in tqdm(chosen, desc="brandmarks", unit="brand", disable=None if progress else True):
        if icon.title.lower() in seen:
            report.skipped.append(Skipped(f"simple-icons:{icon.slug}", f"duplicate brand name {icon.title!r}"))
            continue
        seen.add(icon.title.lower())
        tiles = _render_brand(icon, out=out, opts=opts, report=report)
        if len(sheet) < 8 and tiles:
            sheet.append(tiles)
    title = f"brandmarks: {len(seen)} brands (seed {opts.seed}); green genuine, red counterfeit"
    return report, finish_build(report, sheet=sheet, title=title)


def _render_brand(icon: BrandIcon, *, out: Path, opts: BrandmarkOptions, report: BuildReport) -> list[Tile]:
    split = split_for(icon.title, seed=opts.seed, val_fraction=opts.val_fraction, test_fraction=opts.test_fraction)
    slug = _slug(icon.slug)
    tiles: list[Tile] = []
    big = max(opts.sizes)

    def emit(name: str, image: np.ndarray, *, source: str, label: Label = Label.GENUINE,
             transform: str | None = None, strength: float | None = None, caption: str = "") -> None:
        rel = f"images/{split}/{slug}/{name}.png"
        save_png(out / rel, image)
        report.rows.append(ManifestRow(image=rel, brand=icon.title, label=label, split=split, source=source,
                                       transform=transform, strength=strength))
        if caption:
            tiles.append(Tile(image, caption, label))

    try:
        mask = icon_mask(icon.svg, height=big)
        for ground_name, ground in (("light", LIGHT), ("dark", DARK)):
            rgba = colorize(mask, _ink_for(icon.color, ground))
            for size in opts.sizes:
                caption = f"{icon.title}: icon, {ground_name}" if size == big else ""
                emit(f"icon_{ground_name}_{size}", _on_ground(rgba, size=size, ground=ground), source="simple-icons", caption=caption)
    except RenderError as exc:
        report.skipped.append(Skipped(f"simple-icons:{icon.slug}", str(exc)))
    start = int(unit_hash("fonts", opts.seed, icon.title) * len(WORDMARK_FONTS))
    for j in range(opts.fonts):
        font = WORDMARK_FONTS[(start + j) % len(WORDMARK_FONTS)]
        try:
            rgba = colorize(text_mask(icon.title, font=font, height=big // 3), _ink_for(icon.color, LIGHT))
        except RenderError as exc:
            report.skipped.append(Skipped(f"wordmark:{icon.slug}:{font}", str(exc)))
            continue
        emit(f"wordmark_{font}", _on_ground(rgba, size=big, ground=LIGHT), source="wordmark",
             caption=f"wordmark {font}" if j == 0 else "")
    spec = mark_spec(icon, seed=opts.seed)
    spec = with_changes(spec, color=_ink_for(spec.color, LIGHT))
    try:
        genuine = render_mark(spec, height=128)
    except RenderError as exc:
        report.skipped.append(Skipped(f"mark:{icon.slug}", str(exc)))
        return tiles
    emit("mark_genuine", _on_ground(genuine, size=big, ground=LIGHT), source="mark", caption="genuine mark")
    names = transform_names(text=spec.has_text)
    for c in range(opts.counterfeits):
        rng = np.random.default_rng(int(unit_hash("brandmarks-cf", opts.seed, icon.slug, c) * 2**63))
        name = names[(start + c * 3) % len(names)]
        strength = round(float(rng.uniform(0.3, 1.0)), 3)
        try:
            fake = TRANSFORMS[name](spec, genuine, strength=strength, rng=rng)
        except RenderError as exc:
            report.skipped.append(Skipped(f"mark:{icon.slug}:{name}", str(exc)))
            continue
        emit(f"mark_cf{c}_{name}", _on_ground(fake, size=big, ground=LIGHT), source="mark", label=Label.COUNTERFEIT,
             transform=name, strength=strength, caption=f"{name} s={strength:.2f}")
    return tiles
