"""Training's eval transform is serving's preprocessing, bit for bit; the cached split computes the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.training.data import augment, eval_transform, load_images, read_items
from markguard.training.model import SplitEmbedder, build_model
from markguard.vision.artifact import load_artifact
from markguard.vision.decode import read_image
from markguard.vision.embed import BACKBONES, preprocess


def test_eval_transform_equals_serving_preprocess_bit_for_bit(tiny_run: Path, tiny_grocery: Path) -> None:
    config = load_artifact(tiny_run / "artifact").embedder
    items = read_items(tiny_grocery)[:4]
    ours = eval_transform(load_images(items), config)
    serving = preprocess([read_image(i.path) for i in items], config)  # what serving runs on an upload
    assert ours.dtype == serving.dtype and torch.equal(ours, serving)


@pytest.mark.parametrize("architecture", sorted(BACKBONES))
@pytest.mark.parametrize("trainable_blocks", [-1, 0, 2])
def test_split_embedder_computes_the_artifact_model(architecture: str, trainable_blocks: int) -> None:
    model = build_model(architecture=architecture, input_size=64, embedding_dim=16, seed=0)
    split = SplitEmbedder(model, trainable_blocks=trainable_blocks)
    split.train()  # batch norm stays in eval mode
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(split.suffix(split.prefix(x)), model(x), atol=1e-6)
        assert torch.allclose(split.pooled_suffix(split.prefix(x)), model.pooled(x), atol=1e-5)  # the epoch-0 baseline
    assert all(not p.requires_grad for p in model.backbone.stem.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    trainable = {id(p) for p in split.trainable_parameters()}
    stages = model.backbone.stages
    assert all(id(p) in trainable for stage in stages[split.split :] for p in stage.parameters())
    assert not any(id(p) in trainable for stage in stages[: split.split] for p in stage.parameters())
    assert (trainable_blocks >= 0) == all(id(p) in trainable for p in model.backbone.final.parameters())


def test_augment_keeps_uint8_rgb_and_never_mirrors() -> None:
    image = np.zeros((80, 120, 3), np.uint8)
    image[:, :60] = 255  # left half white
    params = {"scale_min": 0.9, "rotate": 0.0, "brightness": 0.0, "contrast": 0.0, "blur_p": 0.0}
    for seed in range(5):
        out = augment(image, rng=np.random.default_rng(seed), params=params)
        assert out.dtype == np.uint8 and out.shape[2] == 3
        assert out[:, 0].mean() > out[:, -1].mean()  # white stays on the left


def test_class_key_splits_counterfeits_by_transform_or_not() -> None:
    from markguard.datasets.manifest import Label, ManifestRow
    from markguard.training.data import class_key

    genuine = ManifestRow(image="a.jpg", brand="Acme", product="Tea", label=Label.GENUINE, split="train", source="synth")
    mirrored = ManifestRow(image="b.jpg", brand="Acme", product="Tea", label=Label.COUNTERFEIT, split="train",
                           source="synth", transform="mirrored_element")
    recoloured = ManifestRow(image="c.jpg", brand="Acme", product="Tea", label=Label.COUNTERFEIT, split="train",
                             source="synth", transform="colour_shift")
    assert len({class_key(r) for r in (genuine, mirrored, recoloured)}) == 3
    merged = {class_key(r, per_transform=False) for r in (mirrored, recoloured)}
    assert len(merged) == 1 and merged != {class_key(genuine, per_transform=False)}


def test_batch_norm_statistics_never_move_before_or_during_training() -> None:
    model = build_model(architecture="efficientnet_lite0", input_size=64, embedding_dim=16, seed=0)
    split = SplitEmbedder(model, trainable_blocks=1)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    with torch.no_grad():  # a suffix pass right after construction, as the epoch-0 baseline on a reused cache does
        split.suffix(torch.randn(4, 192, 2, 2) * 3)
    split.train()
    split.suffix(torch.randn(4, 192, 2, 2) * 3).sum().backward()
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)
