"""Deterministic splits: brand-disjoint for synthetic data, so evaluation sees only unseen brands."""

from __future__ import annotations

import hashlib

__all__ = ["unit_hash", "split_for"]


def unit_hash(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts` (SHA-256, so it is the same on every machine and run)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for(key: str, *, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """`train`, `val` or `test` for a key (a brand name for brand-disjoint splits), by hash and seed."""
    u = unit_hash("split", seed, key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"
