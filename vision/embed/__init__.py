"""vision: embed — a CNN that maps an image to an L2-normalised vector."""

from markguard.vision.embed import efficientnet_lite as _efficientnet_lite  # noqa: F401  (registers)
from markguard.vision.embed.backbone import (
    BACKBONES,
    Backbone,
    BackboneEntry,
    PretrainedCfg,
    create_backbone,
    get_backbone,
    register_backbone,
)
from markguard.vision.embed.base import BackboneEmbedder, Embedder, EmbedderConfig
from markguard.vision.embed.preprocess import preprocess
from markguard.vision.embed.run import embed_images

__all__ = [
    "BACKBONES",
    "Backbone",
    "BackboneEntry",
    "BackboneEmbedder",
    "Embedder",
    "EmbedderConfig",
    "PretrainedCfg",
    "create_backbone",
    "get_backbone",
    "register_backbone",
    "preprocess",
    "embed_images",
]
