"""The trained embedder: a registered ImageNet backbone + a linear head, split into a frozen prefix (run
once, cached) and a trainable suffix, so a CPU run fine-tunes only the last stages on cached feature maps.

`suffix(prefix(x))` computes exactly `BackboneEmbedder.compute(x)` (a test checks it), so what is
trained is what the artifact serves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from markguard.vision.embed import BackboneEmbedder, EmbedderConfig, get_backbone

__all__ = ["build_model", "SplitEmbedder", "cache_prefix", "embed_cached"]


def build_model(*, architecture: str, input_size: int, embedding_dim: int, seed: int) -> BackboneEmbedder:
    """A registered backbone's ImageNet trunk (checksummed, strict; its mean/std) + a fresh linear head
    (fixed by `seed`)."""
    entry = get_backbone(architecture)
    config = EmbedderConfig(
        architecture=architecture, input_size=input_size, mean=entry.pretrained.mean, std=entry.pretrained.std,
        embedding_dim=embedding_dim, head="linear", weights_sha256="",
    )
    model = BackboneEmbedder(config)
    model.backbone.load_state_dict(entry.pretrained_state(), strict=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a random (JL-style) projection: cosines of pooled features are roughly kept
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen) / math.sqrt(embedding_dim))
        model.head.bias.zero_()
    return model


class SplitEmbedder(nn.Module):
    """`prefix`: frozen, no gradients. `suffix`: the backbone's last `trainable_blocks` stages and its
    `final` layers (unless `trainable_blocks` is -1), pooling, the linear head and L2 normalisation."""

    def __init__(self, model: BackboneEmbedder, *, trainable_blocks: int) -> None:
        super().__init__()
        stages = len(model.backbone.stages)
        if not -1 <= trainable_blocks <= stages:
            raise ValueError(f"trainable_blocks must lie in [-1, {stages}]")
        self.model = model
        self.trainable_blocks = trainable_blocks
        self.split = stages - max(trainable_blocks, 0)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        self.train()  # batch norm frozen from the start: a pass before the first epoch must not move its statistics

    def trainable_modules(self) -> list[nn.Module]:
        if self.trainable_blocks < 0:
            return []
        return self.model.backbone.modules_from(self.split)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = [p for m in self.trainable_modules() for p in m.parameters()]
        return params + list(self.model.head.parameters())

    def train(self, mode: bool = True) -> SplitEmbedder:
        """Batch-norm statistics stay frozen (eval mode) even while training: small batches of cached
        features would otherwise drift them away from what the trunk was trained with."""
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainable_blocks < 0:
            return self.model.pooled(x)
        return self.model.backbone.forward_until(x, self.split)

    def pooled_suffix(self, f: torch.Tensor) -> torch.Tensor:
        """Cached prefix features → the pooled trunk features (N, feature_dim), before the linear head."""
        if self.trainable_blocks < 0:
            return f
        return self.model.backbone.forward_from(f, self.split).mean(dim=(2, 3))

    def suffix(self, f: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.head(self.pooled_suffix(f)), dim=1)


@torch.no_grad()
def cache_prefix(
    split: SplitEmbedder,
    make_batch: Callable[[int, int], torch.Tensor],
    count: int,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    desc: str = "caching",
) -> torch.Tensor:
    """Run the frozen prefix over `count` inputs, `make_batch(start, stop)` building each batch lazily; (count, ...) float32 on CPU."""
    split.eval()
    split.model.to(memory_format=torch.channels_last)  # NHWC: ~1.6x faster depthwise convs on CPU, same maths
    chunks = []
    for start in tqdm(range(0, count, batch_size), desc=desc, unit="batch", leave=False):
        x = make_batch(start, min(count, start + batch_size)).to(device, memory_format=torch.channels_last)
        chunks.append(split.prefix(x).float().cpu().contiguous())
    if not chunks:
        return torch.empty(0)
    return torch.cat(chunks)


def embed_cached(split: SplitEmbedder, features: torch.Tensor, *, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Unit embeddings from cached prefix features (eval mode, no gradients)."""
    split.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            out.append(split.suffix(features[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(out).numpy() if out else np.empty((0, split.model.config.embedding_dim), np.float32)
