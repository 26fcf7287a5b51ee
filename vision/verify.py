"""vision: verify — a learned mark verifier: is the mark on the photo the reference's mark, cell by cell?

The embedder compares a brand's mark with the photo's as wholes, and on held-out synthetic brands it
barely tells a genuine mark from one with an element moved, removed or mirrored, a letter changed or
strokes thickened. The verifier compares the two marks where they differ. Each is letterboxed onto a
square canvas with its aspect kept: the reference photo whole, and the listing photo two ways, its mark
(the mark detector's best box grown 1.25x, clipped to the photo) and the photo whole (a brand may enrol
its whole package, and a shelf photo's detector box is then only the logo on it). An ImageNet
EfficientNet-Lite0 trunk maps each one to stride 8. Its first `trunk_blocks` stages are frozen, so a
reference's map is computed once and cached; the next `tuned_blocks` stages were fine-tuned with the head.

The head (`MarkHead`, about 112k parameters) builds a local correlation volume in both directions
(each cell's cosines to the other map's cells within `radius`) beside both maps. It applies three
convolutions, mean- and max-pools, and outputs the logit that the photo's mark is not the reference's.

A claim's `MarkEvidence` is the lowest logit over the claim's `references` genuine references nearest
to its best region and the photo's two framings (the mark agrees with one of them); the `mark_mismatch`
signal reads it. The head is trained on synthetic pairs of train-split brands
(`training/experiments/issue21/verifier.py`): logo crops against photos of the logo. Compared with a
whole package (a catalogue shot, a shelf frame) it tells a brand's products apart worse than the
embedding, so with `min_reference_iou` only references that are crops of a mark are compared
(`reference_is_mark`); a claim with none has no mark evidence. `training/README.md` has its figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from markguard.vision.detect import MarkDetector
from markguard.vision.embed.backbone import create_backbone
from markguard.vision.embed.base import ArtifactConfig
from markguard.vision.evidence import MarkEvidence
from markguard.vision.index import ReferenceIndex
from markguard.vision.regions import iou

__all__ = ["VerifierConfig", "MarkHead", "MarkVerifier", "letterbox", "grown", "reference_is_mark",
           "reference_mark_iou", "framed",
           "query_mark_crop", "claim_mark"]

Box = tuple[float, float, float, float]
REFERENCE_FRAME = 2.0  # `reference_is_mark` centres a reference on a canvas this many times its sides


@dataclasses.dataclass(frozen=True)
class VerifierConfig(ArtifactConfig):
    """`verifier.json` of a model artifact."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str = "efficientnet_lite0"
    input_size: int = 128  # the square canvas both marks are letterboxed onto
    trunk_blocks: int = 4  # frozen stem + stages: the maps a reference caches (Lite0: stride 8, 40 channels)
    tuned_blocks: int = 1  # the stages after them, fine-tuned with the head
    dim: int = 32
    radius: int = 3
    hidden: int = 64
    grow: float = 1.25  # the detector's box grown by this much around its centre, as `vision.regions` crops it
    references: int = 3  # the claim's genuine references compared (the lowest logit counts)
    # A reference is compared only when it is a crop of its mark (`reference_is_mark`): centred on a grey
    # canvas twice its sides, the detector's best box grown by `grow` overlaps it at least at this IoU.
    # 0: every reference.
    min_reference_iou: float = 0.0
    weights_file: str = "verifier.safetensors"
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        self.check_input_and_weights_file()
        if self.trunk_blocks < 1 or self.tuned_blocks < 0 or self.radius < 1 or self.references < 1 or self.grow < 1:
            raise ValueError("verifier: trunk_blocks >= 1, tuned_blocks >= 0, radius >= 1, references >= 1, grow >= 1")
        if not 0 <= self.min_reference_iou <= 1:
            raise ValueError("verifier: min_reference_iou is an IoU, 0 to 1")


class MarkHead(nn.Module):
    """Logit that the query's mark is not the reference's, from their maps: a local correlation volume both
    ways beside both maps, three convolutions (the first 1x1: the volume already spans the neighbourhood),
    average- and max-pooled."""

    def __init__(self, channels: int, *, dim: int = 32, radius: int = 3, hidden: int = 64) -> None:
        super().__init__()
        self.radius = radius
        self.proj = nn.Conv2d(channels, dim, 1)
        window = (2 * radius + 1) ** 2
        self.body = nn.Sequential(
            nn.Conv2d(2 * window + 2 * dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, stride=2), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        )
        self.out = nn.Linear(2 * hidden, 1)

    def correlation(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, window, H, W): cosine of each cell of `a` with the cells of `b` around it."""
        r = self.radius
        h, w = b.shape[2:]
        padded = F.pad(b, (r, r, r, r))
        return torch.stack([(a * padded[:, :, dy : dy + h, dx : dx + w]).sum(1)
                            for dy in range(2 * r + 1) for dx in range(2 * r + 1)], 1)

    def forward(self, ref: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        a = F.normalize(self.proj(ref), dim=1)
        b = F.normalize(self.proj(query), dim=1)
        x = self.body(torch.cat([self.correlation(b, a), self.correlation(a, b), a, b], 1))
        return self.out(torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)).squeeze(1)


class MarkVerifier(nn.Module):
    """The trunk (frozen stages, then tuned ones) and `MarkHead`. `maps` runs the frozen part on crops;
    `forward` runs the rest on a pair of maps."""

    def __init__(self, config: VerifierConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = create_backbone(config.architecture).truncate(config.trunk_blocks + config.tuned_blocks)
        with torch.no_grad():
            probe = self.tuned(self.trunk.forward_until(torch.zeros(1, 3, config.input_size, config.input_size),
                                                        config.trunk_blocks))
        self.head = MarkHead(probe.shape[1], dim=config.dim, radius=config.radius, hidden=config.hidden)

    def tuned(self, maps: torch.Tensor) -> torch.Tensor:
        for stage in self.trunk.stages[self.config.trunk_blocks :]:
            maps = stage(maps)
        return maps

    def forward(self, ref_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.tuned(ref_maps), self.tuned(query_maps))

    def canvas(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """Letterboxed RGB uint8 crops (`letterbox`, `input_size` square) → the normalised batch."""
        size = self.config.input_size
        for i, crop in enumerate(crops):
            if crop.shape != (size, size, 3) or crop.dtype != np.uint8:
                raise ValueError(f"crop {i}: expected ({size}, {size}, 3) uint8, got {crop.shape} {crop.dtype}")
        batch = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.config.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self.config.std).view(1, 3, 1, 1) * 255.0
        return (batch - mean) / std

    @torch.no_grad()
    def maps(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """The frozen trunk's maps of letterboxed crops, (N, C, H, W)."""
        self.eval()
        return self.trunk.forward_until(self.canvas(crops), self.config.trunk_blocks)

    def compares(self, photo: np.ndarray, detector: MarkDetector | None) -> bool:
        """Whether the verifier compares this reference: a crop of its mark (`reference_is_mark` with
        `min_reference_iou`; with no detector to tell, none is), or any reference when that is 0. It
        costs a detector pass; the map costs a tenth of that, so a cache may keep the verdict longer."""
        return self.config.min_reference_iou <= 0 or reference_is_mark(
            photo, detector, min_iou=self.config.min_reference_iou, grow=self.config.grow)

    def reference_map(self, photo: np.ndarray, detector: MarkDetector | None) -> torch.Tensor | None:
        """A reference's map (`photo_map`), or None when the verifier does not compare it (`compares`)."""
        return self.photo_map(photo) if self.compares(photo, detector) else None

    def photo_map(self, photo: np.ndarray) -> torch.Tensor:
        """The map of a photo whole, letterboxed."""
        h, w = photo.shape[:2]
        return self.maps([letterbox(photo, (0, 0, w, h), self.config.input_size)])[0]

    def query_map(self, photo: np.ndarray, mark_boxes: Sequence[Box]) -> torch.Tensor:
        """A listing photo's maps, (Q, C, H, W): its mark as `query_mark_crop` cuts it and, when that is a
        detector's box, the photo whole."""
        h, w = photo.shape[:2]
        crops = [query_mark_crop(photo, mark_boxes, size=self.config.input_size, grow=self.config.grow)]
        if mark_boxes:
            crops.append(letterbox(photo, (0, 0, w, h), self.config.input_size))
        return self.maps(crops)

    @torch.no_grad()
    def logits(self, ref_maps: torch.Tensor, query_maps: torch.Tensor) -> np.ndarray:
        """(Q, C, H, W) query maps (or one, (C, H, W)) against (N, C, H, W) reference maps: (N, Q) logits
        ((N,) for one query map), higher is less like the reference."""
        self.eval()
        single = query_maps.dim() == 3
        queries = query_maps.float().reshape(-1, *ref_maps.shape[1:])
        n, q = len(ref_maps), len(queries)
        out = self(ref_maps.float().repeat_interleave(q, 0), queries.repeat(n, 1, 1, 1)).reshape(n, q).numpy()
        return out[:, 0] if single else out


def letterbox(image: np.ndarray, box: Box, size: int | tuple[int, int]) -> np.ndarray:
    """The box's pixels (clipped to the photo) scaled to fit a canvas of `size` (a square's side, or
    height and width) with their aspect kept, centred on grey."""
    height, width = (size, size) if isinstance(size, int) else size
    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0 = min(max(0, x0), w - 1), min(max(0, y0), h - 1)
    x1, y1 = min(w, max(x0 + 1, x1)), min(h, max(y0 + 1, y1))
    patch = image[y0:y1, x0:x1]
    s = min(height / patch.shape[0], width / patch.shape[1])
    nw, nh = min(width, max(1, round(patch.shape[1] * s))), min(height, max(1, round(patch.shape[0] * s)))
    patch = cv2.resize(patch, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.full((height, width, 3), 127, np.uint8)
    oy, ox = (height - nh) // 2, (width - nw) // 2
    out[oy : oy + nh, ox : ox + nw] = patch
    return out


def grown(box: Box, factor: float, shift: tuple[float, float] = (0.0, 0.0), aspect: float = 1.0) -> Box:
    """`box` scaled by `factor` about its centre moved by `shift` (in box sides), its width by `aspect`
    more and its height by `aspect` less."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2 + shift[0] * w, (y0 + y1) / 2 + shift[1] * h
    hw, hh = w * factor * aspect / 2, h * factor / aspect / 2
    return cx - hw, cy - hh, cx + hw, cy + hh


def reference_is_mark(photo: np.ndarray, detector: MarkDetector | None, *, min_iou: float,
                      grow: float = 1.25) -> bool:
    """Whether a reference photo is a crop of a mark rather than a package or a scene with a mark on it:
    `reference_mark_iou` at least `min_iou` (never without a detector to tell)."""
    return detector is not None and reference_mark_iou(photo, detector, grow=grow) >= min_iou


def reference_mark_iou(photo: np.ndarray, detector: MarkDetector, *, grow: float = 1.25) -> float:
    """Centred on a grey canvas twice its sides (the scale the detector learnt marks at), a crop of a logo
    is found whole: the IoU of the detector's best box, grown by `grow`, with the photo (0 when it finds
    none). On a package it finds the logo printed on it, a small part. A photo larger than twice the
    detector's input size is first shrunk to it (the detector shrinks the canvas further), so a large
    reference costs no more."""
    h, w = photo.shape[:2]
    s = 2 * detector.config.input_size / max(h, w)
    if s < 1:
        photo = cv2.resize(photo, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    canvas, where = framed(photo, REFERENCE_FRAME)
    found = detector.detect([canvas])[0]
    return iou(grown(found[0].box, grow), where) if found else 0.0


def framed(photo: np.ndarray, pad: float) -> tuple[np.ndarray, Box]:
    """The photo centred on a grey canvas `pad` times its sides, and where it lies there."""
    h, w = photo.shape[:2]
    ch, cw = round(h * pad), round(w * pad)
    oy, ox = (ch - h) // 2, (cw - w) // 2
    out = np.full((ch, cw, 3), 127, np.uint8)
    out[oy : oy + h, ox : ox + w] = photo
    return out, (ox, oy, ox + w, oy + h)


def query_mark_crop(photo: np.ndarray, mark_boxes: Sequence[Box], *, size: int, grow: float) -> np.ndarray:
    """The photo's mark letterboxed: the detector's best box grown by `grow`, else the whole photo."""
    h, w = photo.shape[:2]
    return letterbox(photo, grown(mark_boxes[0], grow) if mark_boxes else (0, 0, w, h), size)


def claim_mark(index: ReferenceIndex, vector: np.ndarray, verifier: MarkVerifier, *, brand_id: int,
               product_id: int | None, query_map: Callable[[], torch.Tensor],
               reference_map: Callable[[int], torch.Tensor | None]) -> MarkEvidence | None:
    """The photo's maps (`MarkVerifier.query_map`) against the claim's `references` genuine references
    nearest to `vector` (the region that spoke for the claim): the lowest logit and its reference. None
    when the claim has no reference, or none whose photo is still there. Training and serving both call
    this."""
    hits = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), verifier.config.references,
                        brand_id=brand_id, product_id=product_id, kind="genuine")
    maps = {int(i): reference_map(int(i)) for i in hits.ids[0] if i >= 0}
    maps = {i: m for i, m in maps.items() if m is not None}
    if not maps:
        return None
    logits = verifier.logits(torch.stack(list(maps.values())), query_map()).min(axis=1)
    best = int(np.argmin(logits))
    return MarkEvidence(logit=float(logits[best]), reference_id=list(maps)[best])
