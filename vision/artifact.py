"""Model artifacts: a folder holding weights, `embedder.json`, `fusion.json` and `card.json`, and
optionally a mark detector (`detector.json` and its weights) and a mark verifier (`verifier.json` and
its weights).

Weights load through `vision.weights.load_weights` alone (re-exported here): the SHA-256 is checked
before a byte is parsed, and only safetensors (or, for upstream ImageNet files,
`torch.load(weights_only=True)`) is used. What a backbone needs to become an artifact (weights,
their checksum, input size, mean/std, feature size) comes from its registry entry (`vision.embed`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import save_file

from markguard.vision.detect import DetectorConfig, MarkDetector
from markguard.vision.embed import BackboneEmbedder, EmbedderConfig, get_backbone
from markguard.vision.errors import IntegrityError
from markguard.vision.verify import MarkVerifier, VerifierConfig
from markguard.vision.weights import load_weights, sha256_file

__all__ = [
    "ModelArtifact",
    "load_artifact",
    "read_verifier",
    "write_artifact",
    "load_weights",
    "sha256_file",
    "build_imagenet_artifact",
    "settings_digests",
    "changed_settings",
    "DEFAULT_MAX_REGIONS",
    "SETTINGS_FILES",
    "read_settings",
    "parse_artifact",
]

_T = TypeVar("_T")
DEFAULT_MAX_REGIONS = 6  # regions per query photo when a fusion does not say (`ModelArtifact.max_regions`)
# Beside the weights, what decides a score: input sizes, region and box limits, the verifier's reference
# gate, the fusion's weights and thresholds. A registry pins them (`settings_digests`) as it pins weights.
SETTINGS_FILES = ("card.json", "embedder.json", "detector.json", "verifier.json", "fusion.json")
# card.json (its tag names the model's index folder and Bento tag) joined the pin later: a pin taken
# before lacks it, read as "card not pinned yet" (`changed_settings`).
LEGACY_UNPINNED = "card.json"


@dataclasses.dataclass(frozen=True)
class ModelArtifact:
    path: Path
    embedder: EmbedderConfig
    fusion: dict[str, Any]
    card: dict[str, Any]
    detector: DetectorConfig | None = None  # the learned mark detector, when the model has one
    verifier: VerifierConfig | None = None  # the learned mark verifier, when the model has one

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
        if fuse:
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

    def load_verifier(self) -> MarkVerifier | None:
        """The mark verifier in eval mode (CPU), or None when the artifact has none (no `mark_mismatch`)."""
        return _verifier(self.path, self.verifier) if self.verifier is not None else None


def read_settings(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The raw bytes of each of the artifact's settings files (`SETTINGS_FILES`, those it has), by name:
    read once, so the bytes a caller checks against a pin are the bytes `parse_artifact` parses."""
    folder = Path(path)
    found = {}
    for name in SETTINGS_FILES:
        try:
            found[name] = (folder / name).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
    return found


def parse_artifact(path: str | os.PathLike[str], files: Mapping[str, bytes]) -> ModelArtifact:
    """The artifact at `path` from its settings files' bytes (`read_settings`); a file that is missing or
    does not parse as what it should hold is an IntegrityError naming it, never a bare parse error."""
    path = Path(path)
    for name in ("embedder.json", "fusion.json", "card.json"):
        if name not in files:
            raise IntegrityError(f"{path}: not a model artifact ({name} missing)")
    embedder = _parsed(path / "embedder.json", files["embedder.json"], _config(EmbedderConfig))
    fusion = _parsed(path / "fusion.json", files["fusion.json"], dict)
    card = _parsed(path / "card.json", files["card.json"], dict)
    if not isinstance(card.get("tag"), str) or not card["tag"]:
        raise IntegrityError(f"{path}: card.json has no tag")
    detector = verifier = None
    if "detector.json" in files:
        detector = _parsed(path / "detector.json", files["detector.json"], _config(DetectorConfig))
    if "verifier.json" in files:
        verifier = _parsed(path / "verifier.json", files["verifier.json"], _config(VerifierConfig))
    return ModelArtifact(path=path, embedder=embedder, fusion=fusion, card=card, detector=detector, verifier=verifier)


def _parsed(path: Path, data: bytes, build: Callable[[dict[str, Any]], _T]) -> _T:
    """`build` of the JSON object `data` (the file `path`'s bytes); anything else an IntegrityError naming it."""
    try:
        raw = json.loads(data.decode("utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        return build(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # UnicodeDecodeError is a ValueError
        raise IntegrityError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None


def _config(cls: type[_T]) -> Callable[[dict[str, Any]], _T]:
    """What `cls.from_json` does, for bytes already read: unknown keys refused, mean/std as tuples."""
    def build(raw: dict[str, Any]) -> _T:
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}")
        return cls(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    return build


def load_artifact(path: str | os.PathLike[str]) -> ModelArtifact:
    """The artifact at `path`, unchecked against any pin (a registry checks `read_settings` first)."""
    return parse_artifact(path, read_settings(path))


def read_verifier(folder: str | os.PathLike[str]) -> MarkVerifier:
    """The mark verifier of a folder holding `verifier.json` and its weights (an artifact, or a verifier
    exported on its own), its weights checked against the SHA-256 the JSON pins."""
    folder = Path(folder)
    if not (folder / "verifier.json").is_file():
        raise IntegrityError(f"{folder}: no verifier.json")
    return _verifier(folder, _parsed(folder / "verifier.json", (folder / "verifier.json").read_bytes(),
                                     _config(VerifierConfig)))


def _verifier(folder: Path, config: VerifierConfig) -> MarkVerifier:
    if not config.weights_sha256:
        raise IntegrityError(f"{folder}: verifier.json pins no weights_sha256")
    verifier = MarkVerifier(config)
    verifier.load_state_dict(load_weights(folder / config.weights_file, sha256=config.weights_sha256), strict=True)
    return verifier.eval()


def settings_digests(source: str | os.PathLike[str] | Mapping[str, bytes]) -> dict[str, str]:
    """SHA-256 of each of the artifact's settings files (`SETTINGS_FILES`, those it has), by name, of the
    folder `source` or of files already read (`read_settings`). A weights checksum lives in its settings
    file, so these also cover which weights are loaded."""
    files = source if isinstance(source, Mapping) else read_settings(source)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def changed_settings(source: str | os.PathLike[str] | Mapping[str, bytes], pinned: Mapping[str, str]) -> list[str]:
    """The settings files of the artifact (a folder, or files already read) that differ from `pinned`
    (`settings_digests` taken when it was registered or stored): edited, added or removed since.

    A pin taken before `card.json` was pinned has no entry for it; its card is then not compared (the
    registry still compares the card's tag with the row's, and `markguard model pin` adds the entry)."""
    found = settings_digests(source)
    names = {*found, *pinned} - (set() if LEGACY_UNPINNED in pinned else {LEGACY_UNPINNED})
    return sorted(name for name in names if found.get(name) != pinned.get(name))


def write_artifact(
    dest: str | os.PathLike[str],
    *,
    state_dict: dict[str, torch.Tensor],
    embedder: EmbedderConfig,
    fusion: dict[str, Any],
    card: dict[str, Any],
    detector: MarkDetector | None = None,
    verifier: MarkVerifier | None = None,
) -> ModelArtifact:
    """Write a complete artifact to `dest` atomically (a temporary sibling folder, then rename).

    `embedder.weights_sha256` (and the detector's and verifier's) is filled in from the written file; `card["tag"]`
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
        for name, part in (("detector", detector), ("verifier", verifier)):
            if part is None:
                continue
            weights = tmp / part.config.weights_file
            save_file({k: v.detach().contiguous().cpu() for k, v in part.state_dict().items()}, str(weights))
            config = dataclasses.replace(part.config, weights_sha256=sha256_file(weights))
            (tmp / f"{name}.json").write_text(config.to_json())
            card = {**card, f"{name}_sha256": config.weights_sha256}  # what a registry pins, with the embedder's
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


def build_imagenet_artifact(
    dest: str | os.PathLike[str], *, fusion: dict[str, Any], architecture: str = "efficientnet_lite0"
) -> ModelArtifact:
    """Convert a registered backbone's pinned ImageNet weights into an artifact: pooled features, no
    head, the input size and mean/std they were trained with.

    The classifier is kept in the file so that tests can prove the weights are the real ones.
    """
    entry = get_backbone(architecture)
    cfg = entry.pretrained
    state = {f"backbone.{k}": v for k, v in entry.pretrained_state().items()}
    config = EmbedderConfig(
        architecture=architecture,
        input_size=cfg.input_size,
        mean=cfg.mean,
        std=cfg.std,
        embedding_dim=entry.feature_dim,
        head="none",
        weights_sha256="",
    )
    card = {
        "tag": f"{cfg.tag}-{cfg.sha256[:8]}",
        "description": f"ImageNet-pretrained {architecture}, global-average-pooled; not trained for markguard.",
        "source": cfg.source,
        "upstream_sha256": cfg.sha256,
        "metrics": {},
    }
    return write_artifact(dest, state_dict=state, embedder=config, fusion=fusion, card=card)
