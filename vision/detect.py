"""vision: detect — a learned mark detector: where on a listing photo a brand's mark sits.

Single-level FCOS (Tian et al., ICCV 2019): a registered ImageNet backbone up to stride 16 (its stem and
first `trunk_blocks` stages, frozen; EfficientNet-Lite0's first 11 MBConv blocks), two 3x3 conv +
GroupNorm + ReLU layers, and for every cell of the stride-16 grid a mark logit and the log distances,
in strides, from the cell centre to the box's four sides. `training/detector.py` trains the head on the `mark` boxes of
synthetic listing photos; the boxes it finds lead the region proposals (`vision.regions`), so the
embedder sees the mark rather than a window that happens to hold part of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from markguard.vision.embed.backbone import create_backbone
from markguard.vision.embed.base import ArtifactConfig
from markguard.vision.embed.preprocess import preprocess
from markguard.vision.regions import iou

__all__ = ["Detection", "DetectorConfig", "MarkDetector", "encode_boxes", "decode_boxes"]

Box = tuple[int, int, int, int]


@dataclasses.dataclass(frozen=True)
class Detection:
    box: Box  # x0, y0, x1, y1 in the photo's pixels; x1 and y1 exclusive
    score: float  # the cell's mark probability


@dataclasses.dataclass(frozen=True)
class DetectorConfig(ArtifactConfig):
    """`detector.json` of a model artifact."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    architecture: str = "efficientnet_lite0"
    input_size: int = 320  # px, square; the photo is resized to it whole (no crop)
    trunk_blocks: int = 11  # stem + this many backbone stages; Lite0's first 11 end at stride 16, 112 channels
    stride: int = 16
    hidden: int = 96
    max_boxes: int = 3
    min_score: float = 0.05
    nms_iou: float = 0.4
    weights_file: str = "detector.safetensors"
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        self.check_input_and_weights_file()
        if self.input_size % self.stride:
            raise ValueError(f"input_size {self.input_size} is not a multiple of stride {self.stride}")
        if self.max_boxes < 1 or not 0 <= self.min_score < 1 or not 0 < self.nms_iou <= 1:
            raise ValueError("detector: max_boxes >= 1, 0 <= min_score < 1 and 0 < nms_iou <= 1")


class MarkDetector(nn.Module):
    """`features` (the frozen trunk prefix, run once per photo in training) then `head`."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.config = config
        self.runtime_forward = None  # `vision.runtime.onnx_forward` of this detector, set by `use_runtime`
        self.trunk = create_backbone(config.architecture).truncate(config.trunk_blocks)
        self.register_load_state_dict_pre_hook(_rename_legacy_trunk_keys)
        with torch.no_grad():
            probe = self.features(torch.zeros(1, 3, config.input_size, config.input_size))
        if config.input_size // probe.shape[-1] != config.stride:
            raise ValueError(f"{config.trunk_blocks} stages end at stride {config.input_size // probe.shape[-1]}, "
                             f"not {config.stride}")
        h = config.hidden
        self.body = nn.Sequential(nn.Conv2d(probe.shape[1], h, 3, padding=1), nn.GroupNorm(8, h), nn.ReLU(),
                                  nn.Conv2d(h, h, 3, padding=1), nn.GroupNorm(8, h), nn.ReLU())
        self.logit = nn.Conv2d(h, 1, 1)
        self.distance = nn.Conv2d(h, 4, 1)
        nn.init.constant_(self.logit.bias, -4.0)  # marks are rare cells (focal-loss prior, Lin et al. 2017)

    @classmethod
    def from_trunk(cls, config: DetectorConfig, trunk_state: dict[str, torch.Tensor]) -> MarkDetector:
        """A fresh head on a trunk whose full state dict (e.g. the registry's ImageNet weights) is `trunk_state`."""
        detector = cls(config)
        wanted = detector.trunk.state_dict().keys()
        missing = [k for k in wanted if k not in trunk_state]
        if missing:
            raise ValueError(f"trunk weights do not fit {config.architecture}: missing {missing[:3]}")
        detector.trunk.load_state_dict({k: trunk_state[k] for k in wanted}, strict=True)
        return detector

    def trunk_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return [*self.body.parameters(), *self.logit.parameters(), *self.distance.parameters()]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk.forward_until(x, self.config.trunk_blocks)

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, G, G) mark logits and (N, 4, G, G) log distances (left, top, right, bottom) in strides."""
        f = self.body(features)
        return self.logit(f)[:, 0], self.distance(f)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(x))

    def use_runtime(self, runtime: str, *, threads: int | None = None) -> str:
        """Run `detect` on `runtime` ("onnx" or "torch"); returns the runtime in force (ONNX Runtime
        only where installed and equal to eager PyTorch within `vision.runtime.TOLERANCE`)."""
        from markguard.vision.runtime import onnx_forward

        self.runtime_forward = None
        if runtime == "onnx":
            probe = torch.rand(2, 3, self.config.input_size, self.config.input_size) * 2 - 1
            self.runtime_forward = onnx_forward(self, probe, outputs=("logits", "log_distances"), threads=threads)
        return "onnx" if self.runtime_forward is not None else "torch"

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return preprocess(images, self.config)

    @torch.no_grad()
    def detect(self, images: Sequence[np.ndarray], *, batch_size: int = 16) -> list[list[Detection]]:
        """The marks found on each RGB uint8 photo, best first (at most `max_boxes`, none below `min_score`)."""
        self.eval()
        device = next(self.parameters()).device
        found: list[list[Detection]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            batch = self.preprocess(chunk).to(device)
            logits, distances = self(batch) if self.runtime_forward is None else self.runtime_forward(batch)
            found += self.decode(logits, distances, [image.shape[:2] for image in chunk])
        return found

    def decode(self, logits: torch.Tensor, log_distances: torch.Tensor,
               image_sizes: Sequence[tuple[int, int]]) -> list[list[Detection]]:
        """`head`'s outputs for a batch → each photo's detections, with this detector's settings."""
        c = self.config
        return [decode_boxes(logit, distance, image_size=size, input_size=c.input_size, stride=c.stride,
                             max_boxes=c.max_boxes, min_score=c.min_score, nms_iou=c.nms_iou)
                for logit, distance, size in zip(logits.cpu(), log_distances.cpu(), image_sizes, strict=True)]


def _rename_legacy_trunk_keys(detector: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str,
                              *_: object) -> None:
    """Detector files written before the backbone interface (the shipped model's) named the trunk
    prefix by its own layers (`stem.`, `blocks.N.` for Lite0); their keys move under `trunk.`."""
    legacy = type(detector.trunk).legacy_prefix_keys  # type: ignore[union-attr]
    if any(key.startswith(prefix + "trunk.") for key in state_dict):
        return
    for key in list(state_dict):
        for old, new in legacy.items():
            if key.startswith(prefix + old):
                state_dict[prefix + "trunk." + new + key[len(prefix + old):]] = state_dict.pop(key)
                break


def _centres(grid: int, stride: int) -> torch.Tensor:
    return (torch.arange(grid, dtype=torch.float32) + 0.5) * stride


def encode_boxes(boxes: Sequence[Box | None], image_sizes: Sequence[tuple[int, int]], *, input_size: int,
                 stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training targets: (N, G, G) 1 where a cell's centre lies inside the photo's mark box (and, so
    thin marks always have one, the cell holding the box's centre), and (N, 4, G, G) the distances in
    strides from each cell centre to the box's sides (at least 1/stride; read only where the mark is)."""
    grid = input_size // stride
    centres = _centres(grid, stride)
    cx, cy = centres.view(1, grid).expand(grid, grid), centres.view(grid, 1).expand(grid, grid)
    target = torch.zeros(len(boxes), grid, grid)
    distance = torch.ones(len(boxes), 4, grid, grid)
    for n, (box, (height, width)) in enumerate(zip(boxes, image_sizes, strict=True)):
        if box is None:
            continue
        x0, x1 = box[0] * input_size / width, box[2] * input_size / width
        y0, y1 = box[1] * input_size / height, box[3] * input_size / height
        inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
        row = min(grid - 1, max(0, int((y0 + y1) / 2 // stride)))
        col = min(grid - 1, max(0, int((x0 + x1) / 2 // stride)))
        inside[row, col] = True
        target[n] = inside.float()
        distance[n] = torch.stack([cx - x0, cy - y0, x1 - cx, y1 - cy]).clamp(min=1.0) / stride
    return target, distance


def decode_boxes(logit: torch.Tensor, log_distance: torch.Tensor, *, image_size: tuple[int, int], input_size: int,
                 stride: int, max_boxes: int, min_score: float, nms_iou: float, candidates: int = 50) -> list[Detection]:
    """One photo's (G, G) logits and (4, G, G) log distances → boxes in its pixels, greedy NMS, best first."""
    height, width = image_size
    grid = logit.shape[-1]
    centres = _centres(grid, stride)
    cx = centres.view(1, grid).expand(grid, grid).flatten()
    cy = centres.view(grid, 1).expand(grid, grid).flatten()
    scores = torch.sigmoid(logit.float()).flatten()
    d = log_distance.float().reshape(4, -1).clamp(max=float(np.log(2 * grid))).exp() * stride
    sx, sy = width / input_size, height / input_size
    chosen: list[Detection] = []
    for i in torch.argsort(scores, descending=True)[:candidates].tolist():
        score = float(scores[i])
        if score < min_score:
            break
        x0, y0 = max(0, round(float(cx[i] - d[0, i]) * sx)), max(0, round(float(cy[i] - d[1, i]) * sy))
        x1, y1 = min(width, round(float(cx[i] + d[2, i]) * sx)), min(height, round(float(cy[i] + d[3, i]) * sy))
        if x1 - x0 < 2 or y1 - y0 < 2:
            continue
        if all(iou((x0, y0, x1, y1), kept.box) <= nms_iou for kept in chosen):
            chosen.append(Detection((x0, y0, x1, y1), score))
            if len(chosen) == max_boxes:
                break
    return chosen
