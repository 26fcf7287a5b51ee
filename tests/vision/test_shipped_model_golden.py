"""The shipped model (serving/default_model) computes what it computed before the backbone interface:
its embeddings (plain and BatchNorm-folded), the detector's logits and its boxes on three grocery
photos, against vectors stored under tests/golden/ by main's code before that change.

A model retrained on purpose changes these: regenerate them with
`.venv/bin/python tests/vision/test_shipped_model_golden.py` and say so in the commit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from markguard.vision.artifact import load_artifact
from markguard.vision.decode import read_image
from markguard.vision.embed import embed_images

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"
GOLDEN = Path(__file__).resolve().parents[1] / "golden"
META = json.loads((GOLDEN / "default_model_outputs.json").read_text())


def compute(grocery: Path) -> dict[str, Any]:
    artifact = load_artifact(SHIPPED)
    images = [read_image(grocery / p) for p in META["photos"]]
    detector = artifact.load_detector()
    assert detector is not None
    with torch.no_grad():
        logits, _ = detector(detector.preprocess(images))
    return {
        "embedder_sha256": artifact.embedder.weights_sha256,
        "detector_sha256": artifact.detector.weights_sha256,
        "embeddings": embed_images(artifact.load_embedder(), images),
        "embeddings_fused": embed_images(artifact.load_embedder(fuse=True), images),
        "logits": logits.numpy(),
        "detections": [[{"box": list(d.box), "score": d.score} for d in found] for found in detector.detect(images)],
    }


def test_shipped_model_matches_its_golden_outputs(grocery: Path) -> None:
    now = compute(grocery)
    assert (now["embedder_sha256"], now["detector_sha256"]) == (META["embedder_sha256"], META["detector_sha256"]), \
        "the shipped model changed: regenerate tests/golden (see this module's docstring)"
    for name in ("embeddings", "embeddings_fused"):
        expected = np.load(GOLDEN / f"default_model_{name}.npy")
        assert now[name].shape == expected.shape
        assert np.abs(now[name] - expected).max() <= 1e-6, name
    expected_logits = np.load(GOLDEN / "default_model_detector_logits.npy")
    assert np.allclose(now["logits"], expected_logits, rtol=1e-5, atol=1e-5)
    assert len(now["detections"]) == len(META["detections"])
    for found, expected in zip(now["detections"], META["detections"], strict=True):
        assert [d["box"] for d in found] == [d["box"] for d in expected]
        assert np.allclose([d["score"] for d in found], [d["score"] for d in expected], rtol=0, atol=1e-6)


if __name__ == "__main__":  # regenerate the fixture (a deliberate model change only)
    import os

    shared = Path(os.environ.get("MARKGUARD_SHARED_DATA", SHIPPED.parents[2] / "shared" / "data"))
    out = compute(shared / "grocery-packages")
    for name in ("embeddings", "embeddings_fused"):
        np.save(GOLDEN / f"default_model_{name}.npy", out[name])
    np.save(GOLDEN / "default_model_detector_logits.npy", out["logits"].astype(np.float32))
    meta = {**META, **{k: out[k] for k in ("embedder_sha256", "detector_sha256", "detections")},
            "computed_with": f"regenerated, torch {torch.__version__}"}
    (GOLDEN / "default_model_outputs.json").write_text(json.dumps(meta, indent=1) + "\n")
