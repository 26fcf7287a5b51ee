"""The one way weights are read: the SHA-256 is checked before a byte is parsed, and only safetensors
(or, for upstream ImageNet files, `torch.load(weights_only=True)`) is used. Never pickle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from markguard.vision.errors import IntegrityError

__all__ = ["load_weights", "sha256_file"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(path: Path, *, sha256: str) -> dict[str, torch.Tensor]:
    """Checksum first, then safetensors or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: weights file missing")
    actual = sha256_file(path)
    if actual != sha256:
        raise IntegrityError(f"{path}: SHA-256 {actual[:12]}… does not match the expected {sha256[:12]}…")
    if path.suffix == ".safetensors":
        return load_file(str(path), device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)
