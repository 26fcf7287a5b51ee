"""vision.embed's backbone registry: every entry splits exactly, and its pretrained weights are the
pinned ones. Parametrized over `BACKBONES`, so a new entry is tested the moment it is registered."""

from __future__ import annotations

import pytest
import torch

from markguard.vision.embed import (
    BACKBONES,
    Backbone,
    EmbedderConfig,
    create_backbone,
    get_backbone,
    preprocess,
)
from markguard.vision.embed.backbone import register_backbone
from markguard.vision.errors import IntegrityError
from markguard.vision.weights import load_weights, sha256_file

NAMES = sorted(BACKBONES)
EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


@pytest.fixture(scope="module", params=NAMES)
def pretrained(request: pytest.FixtureRequest) -> tuple[str, Backbone]:
    return request.param, create_backbone(request.param, pretrained=True).eval()


def test_lite0_is_registered() -> None:
    assert "efficientnet_lite0" in BACKBONES  # the shipped model's backbone


def test_prefix_then_suffix_is_the_whole_trunk(pretrained: tuple[str, Backbone]) -> None:
    """forward_from(forward_until(x, k), k) == forward_features(x) at every split point."""
    _, backbone = pretrained
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = backbone.forward_features(x)
        assert whole.shape[:2] == (1, backbone.feature_dim)
        for k in range(len(backbone.stages) + 1):
            split = backbone.forward_from(backbone.forward_until(x, k), k)
            assert torch.allclose(split, whole, rtol=0, atol=1e-6), k
    with pytest.raises(ValueError, match="split point"):
        backbone.forward_until(x, len(backbone.stages) + 1)


def test_modules_from_are_what_the_suffix_runs(pretrained: tuple[str, Backbone]) -> None:
    """Parameters of `modules_from(k)` are exactly those the suffix has gradients for."""
    _, backbone = pretrained
    k = len(backbone.stages) - 1
    with torch.no_grad():
        f = backbone.forward_until(torch.randn(1, 3, 32, 32), k)
    backbone.zero_grad(set_to_none=True)
    backbone.forward_from(f, k).sum().backward()
    touched = {id(p) for p in backbone.parameters() if p.grad is not None}
    assert touched == {id(p) for m in backbone.modules_from(k) for p in m.parameters()}
    backbone.zero_grad(set_to_none=True)


def test_pretrained_weights_load_with_the_recorded_sha256(pretrained: tuple[str, Backbone]) -> None:
    name, backbone = pretrained
    entry = get_backbone(name)
    path = entry.pretrained.locate()
    assert sha256_file(path) == entry.pretrained.sha256
    state = entry.pretrained_state()
    assert state.keys() == backbone.state_dict().keys()  # strict: every key, and nothing else
    assert all(torch.equal(state[k], v) for k, v in backbone.state_dict().items())
    with pytest.raises(IntegrityError, match="does not match"):
        load_weights(path, sha256="0" * 64)


def test_pretrained_settings_classify_a_cat(pretrained: tuple[str, Backbone]) -> None:
    """The entry's input size and mean/std are the ones its weights were trained with: skimage's cat is a cat."""
    from skimage import data

    name, backbone = pretrained
    cfg = get_backbone(name).pretrained
    config = EmbedderConfig(architecture=name, input_size=cfg.input_size, mean=cfg.mean, std=cfg.std,
                            embedding_dim=backbone.feature_dim, head="none", weights_sha256="")
    with torch.no_grad():
        top = backbone(preprocess([data.chelsea()], config)).argmax(dim=1).item()
    assert top in (EGYPTIAN_CAT, TABBY, TIGER_CAT)


def test_truncate_keeps_the_prefix_only(pretrained: tuple[str, Backbone]) -> None:
    name, whole = pretrained
    k = len(whole.stages) // 2
    prefix = create_backbone(name, pretrained=True).eval().truncate(k)
    assert len(prefix.stages) == k
    assert set(prefix.state_dict()) < set(whole.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prefix.forward_until(x, k), whole.forward_until(x, k))
    with pytest.raises((RuntimeError, ValueError)):
        prefix.forward_features(x)


def test_folded_batchnorm_keeps_the_features(pretrained: tuple[str, Backbone]) -> None:
    name, backbone = pretrained
    fused = create_backbone(name, pretrained=True).eval()
    fused.fuse_batchnorm()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(fused.forward_features(x), backbone.forward_features(x), atol=1e-4)


def test_registry_refuses_unknown_and_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("resnet9000")
    with pytest.raises(ValueError, match="registered twice"):
        register_backbone("efficientnet_lite0", feature_dim=1280, pretrained=get_backbone("efficientnet_lite0").pretrained)(
            get_backbone("efficientnet_lite0").create)
