"""Counterfeit transforms: named, seeded edits of a genuine mark that copy what counterfeiters get wrong.

A registry like timm's `register_model`: `@register_transform("name")` adds a function
`(spec, mark, *, strength, rng) -> mark` to `TRANSFORMS`; `create_transform(name)` returns it wrapped
so that inputs and outputs are checked in one place. `strength` in [0, 1] scales how far the edit goes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from markguard.datasets.fonts import WORDMARK_FONTS
from markguard.datasets.marks import (
    MarkSpec,
    RenderError,
    colorize,
    icon_mask,
    load_icons,
    luminance,
    render_mark,
    with_changes,
)
from markguard.vision.errors import NotFound

__all__ = ["CounterfeitTransform", "TRANSFORMS", "register_transform", "create_transform", "transform_names"]

TransformFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class CounterfeitTransform:
    """A registered transform; calling it checks the mark and strength, the function only edits."""

    name: str
    fn: TransformFn
    needs_text: bool = False

    def __call__(self, spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
        if mark.ndim != 3 or mark.shape[2] != 4 or mark.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected an (H, W, 4) uint8 mark, got {mark.shape} {mark.dtype}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"{self.name}: strength must lie in [0, 1], got {strength}")
        if self.needs_text and not spec.has_text:
            raise ValueError(f"{self.name}: needs a mark with a wordmark")
        out = self.fn(spec, mark, strength=float(strength), rng=rng)
        if out.ndim != 3 or out.shape[2] != 4 or out.dtype != np.uint8 or not (out[..., 3] > 8).any():
            raise RenderError(f"{self.name}: produced no visible mark")
        return np.ascontiguousarray(out)


TRANSFORMS: dict[str, CounterfeitTransform] = {}


def register_transform(name: str, *, needs_text: bool = False) -> Callable[[TransformFn], TransformFn]:
    """Decorator adding a transform to `TRANSFORMS` under `name` (names are unique)."""

    def decorate(fn: TransformFn) -> TransformFn:
        if name in TRANSFORMS:
            raise ValueError(f"transform {name!r} is already registered")
        TRANSFORMS[name] = CounterfeitTransform(name=name, fn=fn, needs_text=needs_text)
        return fn

    return decorate


def create_transform(name: str) -> CounterfeitTransform:
    """The registered transform called `name`; `NotFound` lists the known names otherwise."""
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise NotFound(f"unknown transform {name!r}; known: {', '.join(transform_names())}") from None


def transform_names(*, text: bool = True) -> list[str]:
    """Registered names in registration order (those needing a wordmark only when `text`)."""
    return [n for n, t in TRANSFORMS.items() if text or not t.needs_text]


# ---------------------------------------------------------------------------------------------------
# helpers


def _crop_ink(rgba: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(xs) == 0:
        return rgba
    return rgba[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _components(rgba: np.ndarray, *, min_share: float = 0.01) -> tuple[np.ndarray, list[int]]:
    """Connected ink components (labels image, ids) with at least `min_share` of the ink."""
    ink = (rgba[..., 3] > 64).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    total = max(1, int(ink.sum()))
    ids = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_share * total]
    return labels, ids


def _region(labels: np.ndarray, i: int) -> np.ndarray:
    """Component `i` with its anti-aliased rim (which lies under the 64 threshold), not touching others."""
    core = (labels == i).astype(np.uint8)
    grown = cv2.dilate(core, np.ones((5, 5), np.uint8)).astype(bool)
    return grown & ((labels == 0) | (labels == i))


def _pad(rgba: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(rgba, ((pad, pad), (pad, pad), (0, 0)))


_LOOKALIKE = {
    "o": "0", "O": "0", "0": "O", "l": "I", "I": "l", "i": "l", "m": "rn", "e": "c", "c": "e", "a": "o",
    "u": "v", "v": "u", "n": "h", "h": "n", "S": "5", "s": "5", "B": "8", "G": "C", "C": "G", "E": "F",
    "F": "E", "b": "d", "d": "b", "p": "q", "q": "p", "k": "x", "t": "f", "r": "n", "y": "v", "g": "q",
}  # fmt: skip


def misspell(text: str, *, edits: int, rng: np.random.Generator) -> str:
    """`text` with `edits` counterfeit-style typos: look-alike letters, swaps, doubles and drops."""
    out = text
    for _ in range(max(1, edits)):
        for _attempt in range(10):
            letters = [i for i, ch in enumerate(out) if ch.isalnum()] or list(range(len(out)))
            i = int(rng.choice(letters))
            kind = int(rng.integers(4))
            if kind == 0 and out[i] in _LOOKALIKE:
                cand = out[:i] + _LOOKALIKE[out[i]] + out[i + 1 :]
            elif kind == 1 and i + 1 < len(out) and out[i] != out[i + 1]:
                cand = out[:i] + out[i + 1] + out[i] + out[i + 2 :]
            elif kind == 2:
                cand = out[: i + 1] + out[i] + out[i + 1 :]
            elif kind == 3 and len(out) > 3:
                cand = out[:i] + out[i + 1 :]
            else:
                continue
            if cand != out and cand.strip():
                out = cand
                break
    if out == text:  # every attempt was a no-op (very short names): change one letter outright
        out = text[:-1] + ("x" if text[-1:] != "x" else "z")
    return out


# ---------------------------------------------------------------------------------------------------
# the transforms


@register_transform("misspelled_wordmark", needs_text=True)
def misspelled_wordmark(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The brand name with one to three typos, set in the genuine font."""
    assert spec.text is not None
    text = misspell(spec.text, edits=1 + int(strength * 2.99), rng=rng)
    return render_mark(with_changes(spec, text=text), height=mark.shape[0])


def _family(font: str) -> str:
    return font.split("-")[0].rstrip("0123456789").removesuffix("Bol")


def _bold(font: str) -> bool:
    return "Bold" in font or font.endswith("Bol") or font == "cmb10"


@register_transform("substituted_font", needs_text=True)
def substituted_font(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The right name in the wrong typeface: a sibling style when weak, another family, then another weight."""
    others = [f for f in WORDMARK_FONTS if f != spec.font]
    same_weight = [f for f in others if _bold(f) == _bold(spec.font)]
    if strength < 0.4:
        pool = [f for f in same_weight if _family(f) == _family(spec.font)]
    elif strength < 0.75:
        pool = [f for f in same_weight if _family(f) != _family(spec.font)]
    else:
        pool = [f for f in others if _bold(f) != _bold(spec.font)]
    font = str(rng.choice(pool or same_weight or others))
    return render_mark(with_changes(spec, font=font), height=mark.shape[0])


@register_transform("colour_shift")
def colour_shift(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The official colour moved in hue (or, for black/grey/white marks, tinted and lightened)."""
    rgb = mark[..., :3].reshape(-1, 1, 3)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    r, g, b = spec.color
    if max(r, g, b) - min(r, g, b) < 40:  # achromatic: no hue to shift, so tint it
        hsv[..., 0] = float(rng.uniform(0, 256))
        hsv[..., 1] = 90 + 120 * strength
        dv = (50 + 70 * strength) * (1 if luminance(spec.color) < 0.5 else -1)
        hsv[..., 2] = np.clip(hsv[..., 2] + dv, 0, 255)
    else:
        shift = (18 + 50 * strength) * (1 if rng.random() < 0.5 else -1)  # of 256 hue steps
        hsv[..., 0] = (hsv[..., 0] + shift) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] * float(rng.uniform(0.6, 1.1)), 0, 255)
    out = mark.copy()
    out[..., :3] = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB_FULL).reshape(mark.shape[:2] + (3,))
    return out


@register_transform("aspect_distortion")
def aspect_distortion(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The mark stretched or squeezed horizontally by 10-40 %."""
    factor = 1.0 + (0.1 + 0.3 * strength) * (1 if rng.random() < 0.5 else -1)
    h, w = mark.shape[:2]
    return cv2.resize(mark, (max(2, round(w * factor)), h), interpolation=cv2.INTER_LINEAR)


@register_transform("element_shift")
def element_shift(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One element (a letter, the icon, or half of a one-piece mark) moved out of its place."""
    h = mark.shape[0]
    pad = int(0.3 * h) + 2
    big = _pad(mark, pad)
    labels, ids = _components(big)
    step = (0.05 + 0.15 * strength) * h
    angle = rng.uniform(0, 2 * np.pi)
    dx, dy = int(round(step * np.cos(angle))), int(round(step * np.sin(angle)))
    if len(ids) >= 2:
        region = _region(labels, int(rng.choice(ids)))
    else:  # one piece: shift the right half, as with a misregistered print plate
        region = np.zeros(big.shape[:2], bool)
        region[:, big.shape[1] // 2 :] = True
        dx, dy = 0, dy if dy != 0 else max(1, int(step))
    moved = np.where(region[..., None], big, 0).astype(np.uint8)
    rest = np.where(region[..., None], 0, big).astype(np.uint8)
    moved = np.roll(moved, (dy, dx), axis=(0, 1))
    return _crop_ink(_over(moved, rest))


def _over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    a = top[..., 3:4].astype(np.float32) / 255
    out = bottom.astype(np.float32)
    out[..., :3] = np.where(a > 0, top[..., :3], bottom[..., :3])
    out[..., 3:4] = 255 * (a + out[..., 3:4] / 255 * (1 - a))
    return np.clip(out, 0, 255).astype(np.uint8)


@register_transform("element_removal")
def element_removal(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One element left out (a letter, a part of the icon), or a bite taken out of a one-piece mark."""
    labels, ids = _components(mark, min_share=0.02)
    out = mark.copy()
    if len(ids) >= 2:  # drop one element, never the main one
        areas = {i: int((labels == i).sum()) for i in ids}
        others = sorted((i for i in ids if i != max(areas, key=areas.__getitem__)), key=areas.__getitem__)
        # weak: one of the smaller elements; strong: one of the larger ones
        pick = min(len(others) - 1, int(strength * len(others) * 0.8 + rng.integers(2) * 0.5))
        out[_region(labels, others[pick]), 3] = 0
    else:  # one piece: a bite out of it, sized by strength (the best of a few tries at hitting ink)
        h, w = mark.shape[:2]
        ink = mark[..., 3].astype(np.float64)
        target = (0.06 + 0.16 * strength) * ink.sum()
        best: tuple[float, int, int, int, int] | None = None
        for _ in range(8):
            bw, bh = int(w * rng.uniform(0.2, 0.45)), int(h * rng.uniform(0.25, 0.55))
            x0, y0 = int(rng.integers(0, max(1, w - bw))), int(rng.integers(0, max(1, h - bh)))
            err = abs(ink[y0 : y0 + bh, x0 : x0 + bw].sum() - target)
            if best is None or err < best[0]:
                best = (err, x0, y0, bw, bh)
        assert best is not None
        _, x0, y0, bw, bh = best
        out[y0 : y0 + bh, x0 : x0 + bw, 3] = 0
    return _crop_ink(out) if (out[..., 3] > 8).any() else mark[:, ::-1].copy()


@register_transform("mirrored_element")
def mirrored_element(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """One element flipped (a reversed letter, a mirrored icon), or a strip of a symmetric or one-piece mark."""
    labels, ids = _components(mark, min_share=0.02)
    for axis in (1, 0) if len(ids) >= 2 else ():  # left-right first; upside down only if all are symmetric
        candidates = sorted((_flip_element(mark, _region(labels, i), axis) for i in ids), key=lambda c: -c[0])
        useful = [c for c in candidates if c[0] > max(0.5, 0.25 * candidates[0][0])]
        if useful:
            # strength picks how visible the flip is: weak a small change, strong the most visible one
            pick = min(len(useful) - 1, int((1.0 - strength) * len(useful) + rng.integers(0, 2)))
            return useful[pick][1]
    # one piece, or nothing changes when flipped: mirror a strip at one end in place
    w = mark.shape[1]
    sw = max(2, int(w * (0.25 + 0.35 * strength)))
    x0 = 0 if rng.random() < 0.5 else w - sw
    out = mark.copy()
    out[:, x0 : x0 + sw] = mark[:, x0 : x0 + sw][:, ::-1]
    return out


def _flip_element(mark: np.ndarray, region: np.ndarray, axis: int) -> tuple[float, np.ndarray]:
    """The mark with one element flipped in place along `axis`, and how much the ink changed."""
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    piece = np.flip(np.where(region[..., None], mark, 0)[y0:y1, x0:x1], axis=axis)
    out = np.where(region[..., None], 0, mark).astype(np.uint8)
    out[y0:y1, x0:x1] = _over(np.ascontiguousarray(piece), out[y0:y1, x0:x1])
    return float(np.abs(out[..., 3].astype(np.int16) - mark[..., 3]).mean()), out


@register_transform("stroke_weight")
def stroke_weight(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Strokes made bolder or thinner, as a re-drawn or re-cut printing plate gets them."""
    h = mark.shape[0]
    radius = max(1, round((0.01 + 0.03 * strength) * h))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    big = _pad(mark, radius + 1)
    alpha = big[..., 3]
    thinner = cv2.erode(alpha, kernel)
    if rng.random() < 0.5 and (thinner > 128).sum() > 0.6 * (alpha > 128).sum():
        new_alpha = thinner
    else:
        new_alpha = cv2.dilate(alpha, kernel)
    return _crop_ink(colorize(new_alpha, spec.color) if _uniform(mark) else _with_alpha(big, new_alpha))


def _uniform(mark: np.ndarray) -> bool:
    ink = mark[..., 3] > 8
    return bool(ink.any()) and int(np.ptp(mark[..., :3][ink], axis=0).max()) < 8


def _with_alpha(rgba: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = rgba.copy()
    rgb = cv2.dilate(rgba[..., :3], np.ones((5, 5), np.uint8))  # colour for newly inked pixels
    out[..., :3] = np.where((rgba[..., 3:4] > 8), rgba[..., :3], rgb)
    out[..., 3] = alpha
    return out


@register_transform("degraded_print")
def degraded_print(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Cheap printing: two of blur, ink bleed, a coarse halftone screen and banding."""
    h = mark.shape[0]
    pad = max(2, h // 16)
    big = _pad(mark, pad).astype(np.float32)
    alpha = big[..., 3]
    rgb = big[..., :3]
    effects = rng.permutation(4)[:2]
    for effect in effects:
        if effect == 0:  # blur
            sigma = (0.008 + 0.02 * strength) * h
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
        elif effect == 1:  # ink bleed: spread and darken
            r = max(1, round((0.01 + 0.03 * strength) * h))
            alpha = cv2.GaussianBlur(cv2.dilate(alpha, np.ones((2 * r + 1, 2 * r + 1), np.uint8)), (0, 0), r)
            rgb = rgb * (1.0 - 0.25 * strength)
        elif effect == 2:  # halftone: ink only where a dot screen allows
            period = max(3, round((0.03 + 0.05 * strength) * h))
            yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]].astype(np.float32)
            screen = 0.5 + 0.25 * (np.cos(2 * np.pi * xx / period) + np.cos(2 * np.pi * yy / period))
            alpha = np.where(alpha / 255 > screen * (0.4 + 0.6 * strength), alpha, alpha * (0.55 - 0.4 * strength))
        else:  # banding: horizontal stripes of lighter ink
            period = max(4, round(h / (4 + 8 * strength)))
            rows = (np.arange(alpha.shape[0]) // (period // 2)) % 2 == 1
            rgb[rows] = rgb[rows] + (255 - rgb[rows]) * (0.25 + 0.4 * strength)
            alpha[rows] = alpha[rows] * (1.0 - 0.35 * strength)
    out = np.dstack([rgb, alpha])
    return _crop_ink(np.clip(out, 0, 255).astype(np.uint8))


@register_transform("look_alike")
def look_alike(spec: MarkSpec, mark: np.ndarray, *, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Another brand's mark edited toward this one: its icon in this colour, or its name merged into ours."""
    h = mark.shape[0]
    icons = load_icons()
    if spec.layout in ("lockup", "icon") and spec.svg:
        genuine = icon_mask(spec.svg, height=h).astype(np.float32) / 255
        scored: list[tuple[float, np.ndarray]] = []
        for j in rng.choice(len(icons), size=32, replace=False):
            other = icons[int(j)]
            if other.title == spec.brand:
                continue
            try:
                m = icon_mask(other.svg, height=h)
            except RenderError:
                continue
            m = cv2.resize(m, genuine.shape[::-1], interpolation=cv2.INTER_AREA).astype(np.float32) / 255
            iou = float(np.minimum(m, genuine).sum() / max(1e-6, np.maximum(m, genuine).sum()))
            scored.append((iou, m))
        scored.sort(key=lambda s: -s[0])
        other = scored[min(len(scored) - 1, int(strength * 2.99))][1]  # one of the three most alike
        w = 0.35 + 0.3 * (1.0 - strength)  # how far the other mark is edited toward this one
        blended = np.clip(255 * ((1 - w) * other + w * genuine), 0, 255).astype(np.uint8)
        icon_rgba = colorize(blended, spec.color)
        if spec.layout == "icon" or not spec.text:
            return icon_rgba
        words = render_mark(with_changes(spec, layout="wordmark"), height=round(h * 0.55))
        gap = max(2, h // 6)
        out = np.zeros((h, icon_rgba.shape[1] + gap + words.shape[1], 4), np.uint8)
        out[:, : icon_rgba.shape[1]] = icon_rgba
        y = (h - words.shape[0]) // 2
        out[y : y + words.shape[0], icon_rgba.shape[1] + gap :] = words
        return out
    assert spec.text is not None
    titles = [i.title for i in icons if i.title != spec.brand and abs(len(i.title) - len(spec.text)) <= 2]
    other_text = str(rng.choice(titles)) if titles else spec.text[::-1]
    letters = [i for i in range(1, min(len(spec.text), len(other_text))) if spec.text[i].isalnum()]
    count = min(len(letters), max(1, round(len(spec.text) * (0.1 + 0.2 * strength))))
    swap = set(rng.choice(letters, size=count, replace=False).tolist()) if letters else set()
    text = "".join(other_text[i] if i in swap else ch for i, ch in enumerate(spec.text))
    if text == spec.text:
        text = misspell(spec.text, edits=1, rng=rng)
    return render_mark(with_changes(spec, text=text), height=h)
