"""vision.embed and vision.artifact: real pretrained weights, checked inputs and outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from markguard.vision.artifact import load_artifact, load_weights
from markguard.vision.embed import (
    BACKBONES,
    BackboneEmbedder,
    EmbedderConfig,
    create_backbone,
    embed_images,
    get_backbone,
    preprocess,
)
from markguard.vision.errors import IntegrityError

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


def test_pretrained_weights_are_real_imagenet(imagenet_embedder) -> None:
    """The cat of skimage.data is classified as a cat: the weights and preprocessing are the real ones."""
    from skimage import data

    x = preprocess([data.chelsea()], imagenet_embedder.config)
    with torch.no_grad():
        top5 = imagenet_embedder.backbone(x).softmax(dim=1).topk(5).indices[0].tolist()
    assert top5[0] in (EGYPTIAN_CAT, TABBY, TIGER_CAT)


def test_upstream_checksum_is_pinned_and_checked(tmp_path) -> None:
    pretrained = get_backbone("efficientnet_lite0").pretrained
    assert load_weights(pretrained.locate(), sha256=pretrained.sha256)
    with pytest.raises(IntegrityError, match="does not match"):
        load_weights(pretrained.locate(), sha256="0" * 64)


def test_tampered_artifact_weights_are_refused(imagenet_artifact, tmp_path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(imagenet_artifact.path, copy)
    weights = copy / imagenet_artifact.embedder.weights_file
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        load_artifact(copy).load_embedder()


def test_embeddings_are_unit_norm_and_deterministic(imagenet_embedder) -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in [(50, 80), (300, 200), (224, 224)]]
    a = embed_images(imagenet_embedder, images, batch_size=2)
    b = embed_images(imagenet_embedder, images[::-1], batch_size=3)[::-1]
    assert a.shape == (3, 1280)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-4)
    assert np.allclose(a, b, atol=1e-4)  # batch composition does not change a photo's vector


def test_preprocessing_comes_from_the_config(imagenet_artifact) -> None:
    image = np.full((10, 10, 3), 127, dtype=np.uint8)
    config = dataclasses.replace(imagenet_artifact.embedder, input_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x = preprocess([image], config)
    assert x.shape == (1, 3, 64, 64)
    assert torch.allclose(x, torch.full_like(x, 127.0 / 255.0))


def test_base_class_checks_the_batch(imagenet_embedder) -> None:
    with pytest.raises(ValueError, match="batch"):
        imagenet_embedder(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="floating"):
        imagenet_embedder(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_registered_backbone_embeds(name: str) -> None:
    backbone = create_backbone(name)
    config = EmbedderConfig(
        architecture=name,
        input_size=64,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        embedding_dim=32,
        head="linear",
        weights_sha256="",
    )
    model = BackboneEmbedder(config).eval()
    assert hasattr(backbone, "feature_dim")
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32)


def test_config_round_trips_and_rejects_unknown_keys(tmp_path, imagenet_artifact) -> None:
    path = tmp_path / "embedder.json"
    path.write_text(imagenet_artifact.embedder.to_json())
    assert EmbedderConfig.from_json(path) == imagenet_artifact.embedder
    raw = json.loads(path.read_text())
    raw["surprise"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="unknown keys"):
        EmbedderConfig.from_json(path)


def test_folded_batchnorm_gives_the_same_embeddings(imagenet_artifact) -> None:
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    plain = embed_images(imagenet_artifact.load_embedder(), images)
    fused_model = imagenet_artifact.load_embedder(fuse=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused_model.modules())
    assert np.allclose(embed_images(fused_model, images), plain, atol=1e-4)
