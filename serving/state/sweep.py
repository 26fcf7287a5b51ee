"""Collecting a home's debris: temporary files and blobs that no catalog row names.

A writer killed mid-write leaves `.*.tmp` files (`vision.atomic`), blobs written before a catalog
commit that never came, and index versions no manifest names. `sweep` removes them once they are older
than `min_age_s`, so a write in flight (whose files are young) is never touched; blobs are judged under
the home's write lock, against the references and the scored listings (a review may enroll a
listing's photo), so a writer cannot commit a row naming a blob while it goes. Signed-out console
sessions are forgotten once their tokens have expired anyway.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select

from markguard.serving.indexing import sweep_index_versions
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing, Reference

__all__ = ["SweepReport", "sweep", "drop_unreferenced_blobs", "MIN_AGE_S"]

MIN_AGE_S = 3600.0  # seconds; older than any write in flight (an enroll holds its blobs for minutes at most)


@dataclasses.dataclass
class SweepReport:
    tmp_files: int = 0
    blobs: int = 0
    index_files: int = 0
    revoked_sessions: int = 0
    bytes_freed: int = 0


def sweep(home: Home, *, min_age_s: float = MIN_AGE_S) -> SweepReport:
    """Remove debris older than `min_age_s` seconds from `home`."""
    report = SweepReport()
    cutoff = time.time() - min_age_s
    for path in home.root.rglob(".*.tmp"):
        if path.is_file() and _older(path, cutoff):
            report.bytes_freed += _unlink(path)
            report.tmp_files += 1
    report.index_files, freed = sweep_index_versions(home, older_than=cutoff)
    report.bytes_freed += freed
    with home.write_lock():
        blobs = {p.name: p for p in (home.root / "blobs").glob("??/*") if p.is_file() and not p.name.startswith(".")}
        used = _used(home, blobs)
        for name, path in blobs.items():
            if name not in used and _older(path, cutoff):
                report.bytes_freed += _unlink(path)
                report.blobs += 1
    from markguard.serving.console.sessions import purge_expired  # the console's table, not the state's

    report.revoked_sessions = purge_expired(home)
    return report


def drop_unreferenced_blobs(home: Home, shas: Iterable[str]) -> int:
    """Remove the blobs among `shas` that no reference or listing names (the caller holds the write lock)."""
    candidates = {s: home.blob_path(s) for s in shas}
    used = _used(home, candidates)
    removed = 0
    for sha, path in candidates.items():
        if sha not in used and path.exists():
            _unlink(path)
            removed += 1
    return removed


def _used(home: Home, shas: Iterable[str]) -> set[str]:
    wanted = list(shas)
    used: set[str] = set()
    with home.sessions() as session:
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            used.update(session.scalars(select(Reference.sha256).where(Reference.sha256.in_(chunk))))
            used.update(session.scalars(select(Listing.image_sha256).where(Listing.image_sha256.in_(chunk))))
    return used


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.stat().st_mtime < cutoff
    except FileNotFoundError:
        return False


def _unlink(path: Path) -> int:
    try:
        size = path.stat().st_size
        os.unlink(path)
        return size
    except FileNotFoundError:
        return 0
