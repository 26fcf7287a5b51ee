"""The embedder interface: configs read from an artifact, and a base class that checks what
embedders compute.

`Embedder.forward` validates the input batch and asserts the output is (N, dim), finite and unit
norm; subclasses only build their network and write `compute`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

from markguard.vision.embed.backbone import Backbone, create_backbone

__all__ = ["ArtifactConfig", "EmbedderConfig", "Embedder", "BackboneEmbedder", "HEADS"]

HEADS = ("none", "linear", "linear+pooled")


class ArtifactConfig:
    """What the JSON configs of a model artifact share (`embedder.json`, `vision.detect`'s
    `detector.json`): a square input of `input_size` pixels normalised by `mean`/`std`, a weights file
    that must be a plain name inside the artifact, strict reading and stable writing."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_file: str

    def check_input_and_weights_file(self) -> None:
        if self.input_size < 32 or self.input_size > 1024:
            raise ValueError(f"input_size {self.input_size} out of range")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three channels, std > 0")
        if "/" in self.weights_file or "\\" in self.weights_file or self.weights_file.startswith("."):
            raise ValueError("weights_file must be a plain file name inside the artifact")

    @classmethod
    def from_json(cls, path: Path) -> Self:
        raw = json.loads(Path(path).read_text())
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(raw) - fields
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        return cls(**raw)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"  # type: ignore[call-overload]


@dataclasses.dataclass(frozen=True)
class EmbedderConfig(ArtifactConfig):
    """What `embedder.json` holds: the only source of input size, mean/std and dimension."""

    architecture: str
    input_size: int  # pixels, square
    mean: tuple[float, float, float]  # per RGB channel, on [0, 1] pixels
    std: tuple[float, float, float]
    embedding_dim: int
    head: str  # "none": pooled trunk features; "linear": a learned projection; "linear+pooled": see below
    weights_sha256: str
    weights_file: str = "weights.safetensors"
    # head "linear+pooled" only: the learned projection, L2-normalised, beside the pooled features of a
    # second copy of the trunk's stages from `pooled_split` on (its own weights: the ImageNet ones where
    # the first copy was fine-tuned), L2-normalised and weighted by `pooled_weight`; the whole is unit
    # norm, so cosine = (s_head + pooled_weight² · s_pooled) / (1 + pooled_weight²).
    pooled_weight: float = 0.0
    pooled_split: int = 0

    def __post_init__(self) -> None:
        self.check_input_and_weights_file()
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}")
        if self.head == "linear+pooled":
            if not self.pooled_weight > 0:
                raise ValueError("head 'linear+pooled' needs pooled_weight > 0")
            if self.pooled_split < 0:
                raise ValueError("pooled_split must be >= 0")
        elif self.pooled_weight or self.pooled_split:
            raise ValueError(f"pooled_weight and pooled_split belong to head 'linear+pooled', not {self.head!r}")

    def to_json(self) -> str:
        raw = dataclasses.asdict(self)
        if self.head != "linear+pooled":  # embedder.json of the other heads stays as it always was
            del raw["pooled_weight"], raw["pooled_split"]
        raw["mean"], raw["std"] = list(self.mean), list(self.std)
        return json.dumps(raw, indent=2, sort_keys=True) + "\n"


class Embedder(nn.Module):
    """Base class: checks the batch going in and the unit vectors coming out."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__()
        self.config = config

    def compute(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.config.input_size
        if x.ndim != 4 or x.shape[1:] != (3, size, size):
            raise ValueError(f"expected a (N, 3, {size}, {size}) batch, got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point batch, got {x.dtype}")
        out = self.compute(x)
        n, dim = x.shape[0], self.config.embedding_dim
        if out.shape != (n, dim):
            raise AssertionError(f"{type(self).__name__} returned {tuple(out.shape)}, expected ({n}, {dim})")
        if not torch.isfinite(out).all():
            raise FloatingPointError(f"{type(self).__name__} produced non-finite embeddings")
        norms = out.detach().float().norm(dim=1)
        if n and not torch.allclose(norms, torch.ones_like(norms), atol=1e-3):
            raise AssertionError(f"{type(self).__name__} returned vectors that are not unit norm")
        return out


class BackboneEmbedder(Embedder):
    """A registered trunk, global average pooling, an optional linear projection, L2 normalisation.

    Head `linear+pooled` also keeps `pooled_tail`, a second copy of the trunk's stages from
    `pooled_split` on and its `final` layers, run on the same prefix: the embedding is the projection's
    unit vector and that copy's pooled unit vector times `pooled_weight`, normalised together (a
    fine-tuned head beside the ImageNet features it was fine-tuned from, at a small extra cost)."""

    def __init__(self, config: EmbedderConfig) -> None:
        super().__init__(config)
        self.backbone: Backbone = create_backbone(config.architecture)
        feature_dim = self.backbone.feature_dim
        self.pooled_tail: nn.ModuleList | None = None
        if config.head == "linear":
            self.head: nn.Module = nn.Linear(feature_dim, config.embedding_dim)
        elif config.head == "linear+pooled":
            if config.embedding_dim <= feature_dim:
                raise ValueError(f"head 'linear+pooled' needs embedding_dim > {feature_dim} (projection + pooled)")
            if config.pooled_split > len(self.backbone.stages):
                raise ValueError(f"pooled_split {config.pooled_split} outside [0, {len(self.backbone.stages)}]")
            self.head = nn.Linear(feature_dim, config.embedding_dim - feature_dim)
            self.pooled_tail = nn.ModuleList(create_backbone(config.architecture).modules_from(config.pooled_split))
        elif config.embedding_dim == feature_dim:
            self.head = nn.Identity()
        else:
            raise ValueError(f"head 'none' needs embedding_dim == {feature_dim}")

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features pooled to (N, feature_dim): what training caches when the trunk is frozen."""
        return self.backbone.forward_features(x).mean(dim=(2, 3))

    def compute(self, x: torch.Tensor) -> torch.Tensor:
        if self.pooled_tail is None:
            return F.normalize(self.head(self.pooled(x)), dim=1)
        split = self.config.pooled_split
        f = self.backbone.forward_until(x, split)
        projected = F.normalize(self.head(self.backbone.forward_from(f, split).mean(dim=(2, 3))), dim=1)
        for module in self.pooled_tail:
            f = module(f)
        w = self.config.pooled_weight
        pooled = F.normalize(f.mean(dim=(2, 3)), dim=1)
        return torch.cat([projected, w * pooled], dim=1) / math.sqrt(1.0 + w * w)
