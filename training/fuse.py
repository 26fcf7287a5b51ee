"""A trained embedder made into one whose embedding also carries the ImageNet trunk's pooled features
(embedder head `linear+pooled`, `vision.embed.base`). Measured on GroZi-120 and grocery val in
training/README.md (issue 21) and not shipped: an artifact of it needs its fusion recalibrated on its own
vectors (`training.calibration.calibrate_vectors`, the calibration sets `markguard train` uses) before it
can serve.

The trained model's frozen prefix is the ImageNet trunk up to its fine-tuned stages (checked), so the
ImageNet branch only re-runs the last stages from the shared prefix: `pooled_split` is the trained
model's split point. The weight is a choice made on the calibration sets (grocery_cal, synth_val; see
training/README.md), never on a yardstick.
"""

from __future__ import annotations

import dataclasses

import torch

from markguard.vision.artifact import ModelArtifact, load_weights
from markguard.vision.embed import BackboneEmbedder, get_backbone

__all__ = ["fused_embedder"]


def fused_embedder(trained: ModelArtifact, *, pooled_weight: float) -> BackboneEmbedder:
    """The trained embedder with an ImageNet branch from its split point on (head `linear+pooled`)."""
    if trained.embedder.head != "linear":
        raise ValueError(f"{trained.path}: head {trained.embedder.head!r}, expected a trained 'linear' head")
    arch = trained.embedder.architecture
    entry = get_backbone(arch)
    trainable = int(trained.card.get("config", {}).get("model", {}).get("trainable_blocks", 1))
    state = load_weights(trained.path / trained.embedder.weights_file, sha256=trained.embedder.weights_sha256)
    imagenet = entry.pretrained_state()
    probe = BackboneEmbedder(trained.embedder)
    split = len(probe.backbone.stages) - max(trainable, 0)
    # the shared prefix must be the ImageNet one: the branch continues ImageNet features, not fine-tuned ones
    prefix_keys = set(probe.backbone.state_dict()) - {
        k for m in probe.backbone.modules_from(split) for k in _keys_of(probe.backbone, m)}
    changed = [k for k in prefix_keys if not torch.equal(state[f"backbone.{k}"], imagenet[k])]
    if changed:
        raise ValueError(f"{len(changed)} prefix tensors differ from ImageNet (e.g. {changed[0]}): not a frozen prefix")
    config = dataclasses.replace(trained.embedder, head="linear+pooled",
                                 embedding_dim=trained.embedder.embedding_dim + entry.feature_dim,
                                 pooled_weight=float(pooled_weight), pooled_split=split, weights_sha256="")
    model = BackboneEmbedder(config)
    tail_source = BackboneEmbedder(dataclasses.replace(trained.embedder, head="none",
                                                       embedding_dim=entry.feature_dim, weights_sha256=""))
    tail_source.backbone.load_state_dict(imagenet, strict=True)
    model.load_state_dict({**state, **{f"pooled_tail.{k}": v for k, v in
                                       torch.nn.ModuleList(tail_source.backbone.modules_from(split)).state_dict().items()}},
                          strict=True)
    return model.eval()


def _keys_of(root: torch.nn.Module, module: torch.nn.Module) -> list[str]:
    """State-dict keys of `root` that belong to `module` (a submodule, possibly a view over several)."""
    ids = {id(t) for t in module.state_dict(keep_vars=True).values()}
    return [k for k, t in root.state_dict(keep_vars=True).items() if id(t) in ids]
