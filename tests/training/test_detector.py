"""training.detector: the head learns where marks are (a fit the code must reach), and the shipped
model's detector finds the marks of synthetic listing photos composed afresh."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from markguard.training.data import load_image, mark_box, read_items
from markguard.training.detector import (
    build_detector,
    cache_features,
    detector_items,
    mark_coverage,
    train_detector,
)
from markguard.vision.artifact import load_artifact
from markguard.vision.detect import encode_boxes
from markguard.vision.regions import iou

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"


def test_the_head_learns_the_mark_boxes_it_is_trained_on(tiny_synth: Path) -> None:
    """48 tiny photos, 40 epochs of the head alone: it must fit where their marks are (from a start
    that finds none), or the targets, the flips or the loss are wrong."""
    import torch

    torch.manual_seed(0)
    params = {"input_size": 96, "trunk_blocks": 11, "stride": 16, "hidden": 32, "max_boxes": 3, "min_score": 0.05,
              "nms_iou": 0.4, "epochs": 40, "batch_size": 16, "lr": 0.005, "weight_decay": 0.0, "pos_weight": 5.0}
    photos = detector_items([i for i in read_items(tiny_synth) if i.row.split == "train"])
    detector = build_detector(params)
    features, sizes = cache_features(detector, photos, quiet=True)
    boxes = [mark_box(i) for i in photos]
    before = mark_coverage(detector, features, sizes, boxes)
    history = train_detector(detector, features, encode_boxes(boxes, sizes, input_size=96, stride=16), params=params,
                             seed=0, quiet=True)
    after = mark_coverage(detector, features, sizes, boxes)
    print(f"\ntiny detector fit: {before} -> {after}; loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
    assert len(photos) >= 40 and history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert before["best_box_found"] <= 0.2 and after["best_box_found"] >= 0.8


def test_the_shipped_detector_finds_marks_on_fresh_photos(fresh_synth: Path) -> None:
    artifact = load_artifact(SHIPPED)
    detector = artifact.load_detector()
    assert detector is not None, "the shipped model has no mark detector"
    photos = [i for i in read_items(fresh_synth) if mark_box(i) is not None]
    images = [load_image(i)[0] for i in photos]
    found = detector.detect(images)
    best = np.array([max((iou(d.box, mark_box(i)) for d in f), default=0.0) for i, f in zip(photos, found, strict=True)])
    print(f"\nshipped detector on {len(photos)} fresh photos: IoU >= 0.5 in {np.mean(best >= 0.5):.0%}, "
          f"mean best IoU {best.mean():.2f}")
    assert len(photos) >= 30 and np.mean(best >= 0.5) >= 0.6
