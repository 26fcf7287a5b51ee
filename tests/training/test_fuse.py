"""`training.fuse`: the shipped model's embedder with an ImageNet branch (head `linear+pooled`) computes the
fine-tuned and the ImageNet embeddings side by side, weighted, as one unit vector; configs of the other
heads are unchanged on disk."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.training.fuse import fused_embedder
from markguard.vision.artifact import load_artifact, write_artifact
from markguard.vision.embed import EmbedderConfig

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"


def test_fused_embedding_is_the_weighted_concatenation(imagenet_embedder, tmp_path) -> None:
    shipped = load_artifact(SHIPPED)
    weight = 0.75
    fused = fused_embedder(shipped, pooled_weight=weight)
    assert fused.config.head == "linear+pooled"
    assert fused.config.embedding_dim == shipped.embedder.embedding_dim + 1280
    assert fused.config.pooled_split == 15  # the shipped model fine-tuned its last stage only
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        out = fused(x)
        expected = torch.cat([shipped.load_embedder()(x), weight * imagenet_embedder(x)], dim=1) / np.sqrt(1 + weight**2)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    # cosine = (fine-tuned cosine + w^2 ImageNet cosine) / (1 + w^2): the weight sets the ImageNet share
    cos = float(out[0] @ out[1])
    parts = float(expected[0, :256] @ expected[1, :256]), float(expected[0, 256:] @ expected[1, 256:])
    assert cos == pytest.approx(sum(parts), abs=1e-5)
    # it goes through the artifact path (checksummed weights, strict load) and loads as it was written
    artifact = write_artifact(tmp_path / "fused", state_dict=fused.state_dict(), embedder=fused.config,
                              fusion=shipped.fusion, card={"tag": "fused-test"})
    with torch.no_grad():
        assert torch.allclose(artifact.load_embedder()(x), out, atol=1e-6)
        assert torch.allclose(artifact.load_embedder(fuse=True)(x), out, atol=1e-4)  # BatchNorm folded, as served


def test_pooled_fields_belong_to_the_pooled_head(tmp_path) -> None:
    plain = load_artifact(SHIPPED).embedder
    assert "pooled_weight" not in json.loads(plain.to_json())  # embedder.json of linear heads is as before
    with pytest.raises(ValueError, match="belong to head"):
        dataclasses.replace(plain, pooled_weight=1.0)
    with pytest.raises(ValueError, match="pooled_weight > 0"):
        dataclasses.replace(plain, head="linear+pooled", embedding_dim=1536)
    pooled = dataclasses.replace(plain, head="linear+pooled", embedding_dim=1536, pooled_weight=0.5, pooled_split=15)
    (tmp_path / "embedder.json").write_text(pooled.to_json())
    assert EmbedderConfig.from_json(tmp_path / "embedder.json") == pooled
