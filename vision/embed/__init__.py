"""vision: embed — a CNN that maps an image to an L2-normalised vector."""

from markguard.vision.embed import efficientnet_lite as _efficientnet_lite  # noqa: F401  (registers)
from markguard.vision.embed.base import (
    BACKBONES,
    BackboneEmbedder,
    Embedder,
    EmbedderConfig,
    create_backbone,
    register_backbone,
)
from markguard.vision.embed.preprocess import preprocess
from markguard.vision.embed.run import embed_images

__all__ = [
    "BACKBONES",
    "BackboneEmbedder",
    "Embedder",
    "EmbedderConfig",
    "create_backbone",
    "register_backbone",
    "preprocess",
    "embed_images",
]
