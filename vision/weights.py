"""The one way weights are read: the SHA-256 is checked before a byte is parsed, and only safetensors
(or, for upstream ImageNet files, `torch.load(weights_only=True)`) is used. Never pickle."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load

from markguard.vision.errors import IntegrityError

__all__ = ["load_weights", "sha256_file"]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_weights(path: Path, *, sha256: str) -> dict[str, torch.Tensor]:
    """Checksum first, then safetensors or a weights-only torch file. The file is read once: the bytes
    hashed are the bytes parsed, so a file swapped between the two cannot slip through."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: weights file missing")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise IntegrityError(f"{path}: SHA-256 {actual[:12]}… does not match the expected {sha256[:12]}…")
    try:
        if path.suffix == ".safetensors":
            return load(data)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, ValueError, EOFError) as exc:  # pinned, yet not weights
        raise IntegrityError(f"{path}: not a readable weights file ({exc})") from None
