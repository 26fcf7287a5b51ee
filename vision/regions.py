"""vision: regions — the whole photo plus the crops where a mark or label may sit.

A listing photo's mark may fill a twentieth of the frame, so the embedder also sees crops: the marks a
learned detector found (`vision.detect`, given by the caller), OCR text boxes (given by the caller),
blobs of a saliency-plus-edge map, and multi-scale square windows. All are scored by the same map,
deduplicated by IoU and capped; the first region is always the full photo.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

__all__ = ["Region", "RegionSource", "propose_regions", "region_crops", "crop", "iou"]

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels; x1 and y1 exclusive

_MIN_MARK_SIDE = 8  # a detected mark's region is kept down to this many pixels a side (a thin wordmark)
_WORK_SIDE = 160  # the objectness map is computed at this long side (pixels)
_SALIENCY_SIDE = 64  # spectral residual works on a very small image (Hou & Zhang, CVPR 2007)


class RegionSource(enum.StrEnum):
    FULL = "full"
    MARK = "mark"
    TEXT = "text"
    SALIENCY = "saliency"
    WINDOW = "window"


_CAPPED_SOURCES = (RegionSource.SALIENCY, RegionSource.WINDOW)  # dropped below `min_fraction` of the short side


@dataclasses.dataclass(frozen=True)
class Region:
    """A crop of the photo; `score` is its mean objectness relative to the photo's (full photo = 1)."""

    box: Box
    source: RegionSource
    score: float

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def propose_regions(
    image: np.ndarray,
    *,
    max_regions: int = 10,
    mark_boxes: Iterable[Sequence[float]] = (),
    text_boxes: Iterable[Sequence[float]] = (),
    window_scales: Sequence[float] = (0.4, 0.6),
    iou_threshold: float = 0.4,
    min_side: int = 32,
    min_fraction: float = 0.12,
    text_padding: float = 0.25,
    mark_margin: float = 1.25,
) -> list[Region]:
    """At most `max_regions` regions, inside the image, no two overlapping by more than `iou_threshold`.

    Order: the full photo, then mark boxes (grown about their centre by `mark_margin`, framed as a
    brand's enrolled logo is cropped, shifted into the photo where they cross its edge, kept in the
    given order; dropped only below `_MIN_MARK_SIDE` pixels), then text boxes (padded by
    `text_padding` of their height, kept in the given order), then saliency blobs and windows together
    by score. Saliency blobs and windows narrower than `min_side` pixels or `min_fraction` of the
    photo's short side are dropped (text boxes only by `min_side`). Window scales stay below
    √`iou_threshold`, or the full photo hides them.
    """
    _check_rgb(image)
    if max_regions < 1:
        raise ValueError("max_regions must be at least 1")
    height, width = image.shape[:2]
    objectness = _ObjectnessMap(image)
    full = Region((0, 0, width, height), RegionSource.FULL, 1.0)
    short = min(width, height)
    min_crop = min(short, max(min_side, round(min_fraction * short)))  # for blobs and windows

    def region(box: Box, source: RegionSource) -> Region | None:
        w, h = box[2] - box[0], box[3] - box[1]
        floor = _MIN_MARK_SIDE if source is RegionSource.MARK else min_side
        if w < min(floor, width) or h < min(floor, height) or (source in _CAPPED_SOURCES and min(w, h) < min_crop):
            return None
        return Region(box, source, objectness.score(box))

    marks = [region(_grow_mark(b, mark_margin, width, height), RegionSource.MARK) for b in mark_boxes]
    texts = [region(_pad_text(b, text_padding, width, height), RegionSource.TEXT) for b in text_boxes]
    ranked = [region(b, RegionSource.SALIENCY) for b in objectness.blobs()]
    ranked += [region(b, RegionSource.WINDOW) for b in _windows(width, height, window_scales)]
    ranked_regions = sorted((r for r in ranked if r is not None), key=lambda r: -r.score)

    chosen = [full]
    for candidate in [r for r in [*marks, *texts] if r is not None] + ranked_regions:
        if len(chosen) >= max_regions:
            break
        if all(iou(candidate.box, kept.box) <= iou_threshold for kept in chosen):
            chosen.append(candidate)
    return chosen


def region_crops(
    image: np.ndarray,
    *,
    max_regions: int,
    mark_boxes: Iterable[Sequence[float]] = (),
    text_boxes: Iterable[Sequence[float]] = (),
) -> tuple[list[Region], list[np.ndarray]]:
    """`propose_regions` and each region's pixels (the full photo itself first, not a copy): what the
    embedder sees of one listing photo, in serving and in evaluation alike."""
    regions = propose_regions(image, max_regions=max_regions, mark_boxes=mark_boxes, text_boxes=text_boxes)
    full = (0, 0, image.shape[1], image.shape[0])
    return regions, [image if r.box == full else crop(image, r) for r in regions]


def crop(image: np.ndarray, region: Region | Box) -> np.ndarray:
    """The region's pixels as a contiguous (h, w, 3) copy (the embedder and feature extractors need one)."""
    x0, y0, x1, y1 = region.box if isinstance(region, Region) else region
    height, width = image.shape[:2]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {(x0, y0, x1, y1)} is not inside a {width}x{height} image")
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (x1, y1 exclusive)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


class _ObjectnessMap:
    """Spectral-residual saliency and gradient energy, each scaled to [0, 1], averaged, at low resolution.

    Marks and labels are both salient and dense in edges; averaging the two lets either carry a photo
    where the other is weak.
    """

    def __init__(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        self.scale = min(1.0, _WORK_SIDE / max(height, width))
        size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        self.image_size = (width, height)
        if min(grey.shape) < 8 or grey.std() < 1e-3:  # too thin or flat for either map: all boxes score 1
            self.map = np.ones_like(grey)
        else:
            self.map = 0.5 * _unit(_spectral_residual(grey)) + 0.5 * _unit(_gradient_energy(grey))
        self.integral = cv2.integral(self.map.astype(np.float64))
        self.mean = max(float(self.map.mean()), 1e-9)

    def score(self, box: Box) -> float:
        x0, y0, x1, y1 = self._to_map(box)
        total = self.integral[y1, x1] - self.integral[y0, x1] - self.integral[y1, x0] + self.integral[y0, x0]
        return float(total / ((x1 - x0) * (y1 - y0)) / self.mean)

    def blobs(self, *, max_blobs: int = 6, padding: float = 0.25) -> list[Box]:
        """Padded boxes around the connected areas more than one deviation above the map's mean, largest first."""
        if self.map.shape[0] < 8 or self.map.shape[1] < 8:
            return []
        threshold = self.map.mean() + self.map.std()
        mask = (self.map > threshold).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:max_blobs] + 1 if count > 1 else []
        width, height = self.image_size
        boxes = []
        for label in order:
            x, y, w, h = (int(v) for v in stats[label, :4])
            pad_x, pad_y = padding * w, padding * h
            boxes.append(
                _clip_box(
                    ((x - pad_x) / self.scale, (y - pad_y) / self.scale),
                    ((x + w + pad_x) / self.scale, (y + h + pad_y) / self.scale),
                    width,
                    height,
                )
            )
        return boxes

    def _to_map(self, box: Box) -> Box:
        mh, mw = self.map.shape
        x0 = min(int(box[0] * self.scale), mw - 1)
        y0 = min(int(box[1] * self.scale), mh - 1)
        x1 = min(max(int(np.ceil(box[2] * self.scale)), x0 + 1), mw)
        y1 = min(max(int(np.ceil(box[3] * self.scale)), y0 + 1), mh)
        return x0, y0, x1, y1


def _spectral_residual(grey: np.ndarray) -> np.ndarray:
    """Saliency as the spectral residual of the log amplitude spectrum (Hou & Zhang, CVPR 2007)."""
    height, width = grey.shape
    scale = min(1.0, _SALIENCY_SIDE / max(height, width))
    small = cv2.resize(
        grey, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    spectrum = np.fft.fft2(small)
    log_amplitude = np.log(np.abs(spectrum) + 1e-9)
    residual = log_amplitude - cv2.blur(log_amplitude, (3, 3), borderType=cv2.BORDER_REFLECT)
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    saliency = cv2.GaussianBlur(saliency.astype(np.float32), (0, 0), sigmaX=2.5)
    return cv2.resize(saliency, (width, height), interpolation=cv2.INTER_LINEAR)


def _gradient_energy(grey: np.ndarray) -> np.ndarray:
    """Local density of strong gradients: text, logos and package edges."""
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    return cv2.GaussianBlur(np.hypot(gx, gy), (0, 0), sigmaX=max(grey.shape) / 40)


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-12:
        return np.zeros_like(values, dtype=np.float32)
    return ((values - low) / (high - low)).astype(np.float32)


def _windows(width: int, height: int, scales: Sequence[float]) -> list[Box]:
    """Square windows of side `scale` × the short side, on a grid with half-window steps."""
    boxes = []
    for scale in scales:
        side = max(1, round(scale * min(width, height)))
        xs = _positions(width, side)
        ys = _positions(height, side)
        boxes += [(x, y, x + side, y + side) for y in ys for x in xs]
    return boxes


def _positions(length: int, side: int) -> list[int]:
    if side >= length:
        return [0]
    steps = int(np.ceil((length - side) / (side / 2)))
    return sorted({round(i * (length - side) / steps) for i in range(steps + 1)})


def _ordered(box: Sequence[float], kind: str) -> tuple[float, float, float, float]:
    if len(box) != 4:
        raise ValueError(f"a {kind} box is (x0, y0, x1, y1), got {tuple(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(np.isfinite((x0, y0, x1, y1))):
        raise ValueError(f"{kind} box {tuple(box)} is not finite")
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def _grow_mark(box: Sequence[float], margin: float, width: int, height: int) -> Box:
    x0, y0, x1, y1 = _ordered(box, "mark")
    w, h = min(margin * (x1 - x0), width), min(margin * (y1 - y0), height)
    # centred on the mark, then shifted (not clipped) into the photo: a mark at the edge keeps its size
    left = float(np.clip((x0 + x1 - w) / 2, 0, width - w))
    top = float(np.clip((y0 + y1 - h) / 2, 0, height - h))
    return _clip_box((left, top), (left + w, top + h), width, height)


def _pad_text(box: Sequence[float], padding: float, width: int, height: int) -> Box:
    x0, y0, x1, y1 = _ordered(box, "text")
    pad = padding * (y1 - y0)
    return _clip_box((x0 - pad, y0 - pad), (x1 + pad, y1 + pad), width, height)


def _clip_box(
    top_left: tuple[float, float], bottom_right: tuple[float, float], width: int, height: int
) -> Box:
    """Round outwards and clip into the image, keeping at least one pixel."""
    x0 = int(np.clip(np.floor(top_left[0]), 0, width - 1))
    y0 = int(np.clip(np.floor(top_left[1]), 0, height - 1))
    x1 = int(np.clip(np.ceil(bottom_right[0]), x0 + 1, width))
    y1 = int(np.clip(np.ceil(bottom_right[1]), y0 + 1, height))
    return x0, y0, x1, y1


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected an (H, W, 3) uint8 RGB array")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError("image has no pixels")
