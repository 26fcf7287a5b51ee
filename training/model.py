"""The trained embedder: ImageNet Lite0 + a linear head, split into a frozen prefix (run once, cached)
and a trainable suffix, so a CPU run fine-tunes only the last blocks on cached feature maps.

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

from markguard.vision.artifact import (
    IMAGENET_LITE0_MEAN,
    IMAGENET_LITE0_SHA256,
    IMAGENET_LITE0_STD,
    imagenet_weights_path,
    load_weights,
)
from markguard.vision.embed import BackboneEmbedder, EmbedderConfig

__all__ = ["build_model", "SplitEmbedder", "cache_prefix", "embed_cached"]


def build_model(*, architecture: str, input_size: int, embedding_dim: int, seed: int) -> BackboneEmbedder:
    """ImageNet Lite0 trunk (checksummed, strict) + a fresh linear head (fixed by `seed`)."""
    if architecture != "efficientnet_lite0":
        raise ValueError(f"only efficientnet_lite0 has pretrained weights here, got {architecture!r}")
    config = EmbedderConfig(
        architecture=architecture, input_size=input_size, mean=IMAGENET_LITE0_MEAN, std=IMAGENET_LITE0_STD,
        embedding_dim=embedding_dim, head="linear", weights_sha256="",
    )
    model = BackboneEmbedder(config)
    model.backbone.load_state_dict(load_weights(imagenet_weights_path(), sha256=IMAGENET_LITE0_SHA256), strict=True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a random (JL-style) projection: cosines of pooled features are roughly kept
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=gen) / math.sqrt(embedding_dim))
        model.head.bias.zero_()
    return model


class SplitEmbedder(nn.Module):
    """`prefix`: frozen, no gradients. `suffix`: the last `trainable_blocks` MBConv blocks, the 1x1 head
    conv (unless `trainable_blocks` is -1), pooling, the linear head and L2 normalisation."""

    def __init__(self, model: BackboneEmbedder, *, trainable_blocks: int) -> None:
        super().__init__()
        blocks = model.backbone._blocks
        if not -1 <= trainable_blocks <= len(blocks):
            raise ValueError(f"trainable_blocks must lie in [-1, {len(blocks)}]")
        self.model = model
        self.trainable_blocks = trainable_blocks
        self.split = len(blocks) - max(trainable_blocks, 0)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.trainable_parameters():
            p.requires_grad_(True)
        self.train()  # batch norm frozen from the start: a pass before the first epoch must not move its statistics

    def trainable_modules(self) -> list[nn.Module]:
        bb = self.model.backbone
        if self.trainable_blocks < 0:
            return []
        return [*bb._blocks[self.split :], bb._conv_head, bb._bn1]

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
        bb = self.model.backbone
        if self.trainable_blocks < 0:
            return self.model.pooled(x)
        x = F.relu6(bb._bn0(bb._conv_stem(x)))
        for block in bb._blocks[: self.split]:
            x = block(x)
        return x

    def suffix(self, f: torch.Tensor) -> torch.Tensor:
        bb = self.model.backbone
        if self.trainable_blocks >= 0:
            for block in bb._blocks[self.split :]:
                f = block(f)
            f = F.relu6(bb._bn1(bb._conv_head(f))).mean(dim=(2, 3))
        return F.normalize(self.model.head(f), dim=1)


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
