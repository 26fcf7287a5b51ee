"""Train the mark detector (`vision.detect.MarkDetector`) on the `mark` boxes of training photos.

The trunk is a registered backbone's ImageNet prefix (Lite0's by default), frozen, so it runs once per photo (cached, float16) and the
epochs only train the small head: a binary cross-entropy on which cells hold the mark and a smooth-L1
on the log distances to its sides where they do (FCOS). Horizontal flips are applied to the cached
maps (an approximation of flipping the photo, which is all a mark's position needs). The result is
measured as serving uses it: the share of held-out photos where one of the detector's boxes, grown as
`vision.regions` grows them, overlaps the true mark box by IoU 0.5 or more.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from markguard.training.data import Item, load_image, mark_box
from markguard.vision.detect import DetectorConfig, MarkDetector
from markguard.vision.embed import get_backbone
from markguard.vision.regions import iou, propose_regions

__all__ = ["build_detector", "detector_items", "cache_features", "train_detector", "mark_coverage"]


def build_detector(params: dict[str, Any]) -> MarkDetector:
    """A fresh head (seeded by the caller's torch seed) on the checksummed ImageNet trunk of the
    detector's backbone (`DetectorConfig.architecture`), with that backbone's mean/std."""
    entry = get_backbone(DetectorConfig.architecture)
    config = DetectorConfig(architecture=entry.name, mean=entry.pretrained.mean, std=entry.pretrained.std,
                            input_size=int(params["input_size"]),
                            trunk_blocks=int(params["trunk_blocks"]), stride=int(params["stride"]),
                            hidden=int(params["hidden"]), max_boxes=int(params["max_boxes"]),
                            min_score=float(params["min_score"]), nms_iou=float(params["nms_iou"]))
    detector = MarkDetector.from_trunk(config, entry.pretrained_state())
    for p in detector.trunk_parameters():
        p.requires_grad_(False)
    return detector


def detector_items(items: Sequence[Item]) -> list[Item]:
    """Whole photos (not enrolled crops) that have a `mark` box."""
    return [i for i in items if i.crop is None and mark_box(i) is not None]


@torch.no_grad()
def cache_features(detector: MarkDetector, items: Sequence[Item], *, batch_size: int = 32, device: str = "cpu",
                   desc: str = "detector features", quiet: bool = False) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The frozen trunk's (N, C, G, G) maps (float16) and each photo's (height, width)."""
    detector.eval().to(device, memory_format=torch.channels_last)  # NHWC: faster depthwise convs on CPU
    chunks, sizes = [], []
    for start in tqdm(range(0, len(items), batch_size), desc=desc, unit="batch", leave=False, disable=quiet):
        images = [load_image(item)[0] for item in items[start : start + batch_size]]
        sizes += [image.shape[:2] for image in images]
        x = detector.preprocess(images).to(device, memory_format=torch.channels_last)
        chunks.append(detector.features(x).half().cpu().contiguous())
    return (torch.cat(chunks) if chunks else torch.empty(0)), sizes


def train_detector(detector: MarkDetector, features: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor], *,
                   params: dict[str, Any], seed: int, device: str = "cpu", quiet: bool = False) -> list[dict[str, float]]:
    """Train the head in place on cached features; returns per-epoch losses."""
    target, distance = targets
    log_distance = distance.log()
    epochs, batch_size = int(params["epochs"]), int(params["batch_size"])
    optimizer = torch.optim.AdamW(detector.head_parameters(), lr=float(params["lr"]),
                                  weight_decay=float(params["weight_decay"]))
    steps = max(1, epochs * math.ceil(len(features) / batch_size))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, float(params["lr"]), total_steps=steps)
    pos_weight = torch.tensor(float(params["pos_weight"]), device=device)
    generator = torch.Generator().manual_seed(seed)
    detector.to(device).train()
    history = []
    for epoch in range(1, epochs + 1):
        t = time.monotonic()
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in tqdm(range(0, len(order), batch_size), desc=f"detector epoch {epoch}", unit="batch",
                          leave=False, disable=quiet):
            idx = order[start : start + batch_size]
            x, y, d = features[idx].float(), target[idx].clone(), log_distance[idx].clone()
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            d[flip] = d[flip].flip(-1)[:, [2, 1, 0, 3]]  # left and right swap places
            x, y, d = x.to(device), y.to(device), d.to(device)
            logits, predicted = detector.head(x)
            loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
            cells = y > 0
            if cells.any():
                loss = loss + F.smooth_l1_loss(predicted.permute(0, 2, 3, 1)[cells], d.permute(0, 2, 3, 1)[cells])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
        history.append({"epoch": epoch, "loss": total / max(1, len(features)), "seconds": round(time.monotonic() - t, 2)})
        if not quiet:
            print(f"detector epoch {epoch}: loss {history[-1]['loss']:.4f} ({history[-1]['seconds']:.1f}s)")
    detector.eval()
    return history


@torch.no_grad()
def mark_coverage(detector: MarkDetector, features: torch.Tensor, sizes: Sequence[tuple[int, int]],
                  boxes: Sequence[tuple[int, int, int, int]], *, min_iou: float = 0.5) -> dict[str, float]:
    """On photos with a true `mark` box: how often the best detected box, and any of them once grown
    into a region as serving grows it, overlaps it by `min_iou` or more."""
    detector.eval()
    top, any_region = [], []
    for start in range(0, len(features), 64):
        logits, distances = detector.head(features[start : start + 64].float())
        for k, found in enumerate(detector.decode(logits, distances, sizes[start : start + 64])):
            n = start + k
            top.append(iou(found[0].box, boxes[n]) if found else 0.0)
            height, width = sizes[n]
            blank = np.zeros((height, width, 3), np.uint8)
            regions = propose_regions(blank, max_regions=1 + len(found), mark_boxes=[f.box for f in found])
            any_region.append(max((iou(r.box, boxes[n]) for r in regions[1:]), default=0.0))
    top_a, any_a = np.array(top), np.array(any_region)
    return {"photos": len(top), "min_iou": min_iou, "best_box_found": float(np.mean(top_a >= min_iou)) if top else 0.0,
            "any_region_found": float(np.mean(any_a >= min_iou)) if top else 0.0,
            "mean_best_box_iou": float(top_a.mean()) if top else 0.0}
