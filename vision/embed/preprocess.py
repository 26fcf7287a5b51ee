"""Images → the input batch of an artifact's network (embedder or mark detector). Training's eval
transform and serving both call this."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from markguard.vision.embed.base import ArtifactConfig

__all__ = ["preprocess", "resize_square"]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to (size, size, 3), the whole frame kept (no crop)."""
    h, w = image.shape[:2]
    interpolation = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def preprocess(images: Sequence[np.ndarray], config: ArtifactConfig) -> torch.Tensor:
    """RGB uint8 images → a normalised float32 (N, 3, S, S) tensor per `config` (the embedder's or the
    mark detector's)."""
    size = config.input_size
    batch = np.empty((len(images), size, size, 3), dtype=np.float32)
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image {i}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
        batch[i] = resize_square(image, size)
    mean = np.asarray(config.mean, dtype=np.float32) * 255.0
    std = np.asarray(config.std, dtype=np.float32) * 255.0
    batch = (batch - mean) / std
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
