"""Running an embedder over images: batched, no gradients, progress for long runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from markguard.vision.embed.base import Embedder
from markguard.vision.embed.preprocess import preprocess

__all__ = ["embed_images"]


@torch.inference_mode()
def embed_images(
    model: Embedder, images: Sequence[np.ndarray], *, batch_size: int = 32, progress: bool = False,
    forward: Callable[[torch.Tensor], tuple[torch.Tensor, ...]] | None = None,
) -> np.ndarray:
    """(N, dim) float32 unit vectors for RGB uint8 images, in order. `forward` (from
    `vision.runtime.onnx_forward`) runs the network in place of the eager module."""
    dim = model.config.embedding_dim
    out = np.empty((len(images), dim), dtype=np.float32)
    device = next(model.parameters()).device
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress, leave=False):
        batch = preprocess(images[start : start + batch_size], model.config).to(device)
        vectors = model(batch) if forward is None else forward(batch.cpu())[0]
        out[start : start + len(batch)] = vectors.float().cpu().numpy()
    return out
