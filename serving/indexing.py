"""Keeping a model's FAISS index in step with the catalog.

The catalog is the truth; an index is derived from it and the blobs. Every writer (enroll, delete, a
review's known fake) changes the catalog and commits first, then updates the indexes
(`commit_then_index`): write-ahead. Each saved index records the catalog state it reflects
(`catalog_state`, in its manifest). A reader that finds the catalog in another state than its index
(a writer killed between its commit and its index save, a save that failed on a full disk, a model
promoted) rebuilds the index from the catalog (`reconcile` → `sync_index`), at start-up and on every
refresh: no index serves a vector the catalog lacks, and a committed reference is never left out.

This module owns the home's index folders (`index/<model tag>/`): it alone reads, writes and walks
them (`index_dirs`), and collects the versions no manifest names any more (`sweep_index_versions`,
for `markguard home sweep`). The file format is `vision.index`'s.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference
from markguard.vision.artifact import ModelArtifact
from markguard.vision.decode import decode_image
from markguard.vision.embed import Embedder, embed_images
from markguard.vision.errors import ImageError, IntegrityError, MarkguardError
from markguard.vision.index import KIND_CODES, ReferenceIndex, read_manifest, version_files

__all__ = ["load_or_new", "sync_index", "add_references", "catalog_state", "reconcile", "commit_then_index",
           "index_dirs", "sweep_index_versions"]

log = logging.getLogger("markguard.serving")
LOCK_WAIT_S = 10.0  # seconds a reader waits for a writer before repairing its index in memory only


def load_or_new(home: Home, artifact: ModelArtifact) -> ReferenceIndex:
    """The saved index of `artifact`, or a new empty one; IntegrityError when the saved one is unreadable
    or was saved for another model (its manifest's `model_tag`)."""
    directory = home.index_dir(artifact.tag)
    manifest = read_manifest(directory)
    if manifest is None:
        return ReferenceIndex(artifact.embedder.embedding_dim)
    _check_model(directory, manifest, artifact)
    index = ReferenceIndex.load(directory)
    _check_model(directory, index.extra, artifact)
    return index


def _check_model(directory: Path, manifest: dict, artifact: ModelArtifact) -> None:
    """An index saved for another model (or of another dimension) is not this model's: IntegrityError."""
    tag = manifest.get("model_tag", artifact.tag)  # a manifest of before the field: its folder names it
    if tag != artifact.tag:
        raise IntegrityError(f"{directory}: index saved for model {str(tag)[:60]!r}, not {artifact.tag!r}")
    if manifest.get("dim", artifact.embedder.embedding_dim) != artifact.embedder.embedding_dim:
        raise IntegrityError(f"{directory}: index dimension differs from {artifact.tag!r}'s embeddings")


def _readable_manifest(directory: Path) -> dict | None:
    """`read_manifest`, an unreadable manifest as none (the index is then rebuilt and saved over it)."""
    try:
        return read_manifest(directory)
    except IntegrityError as exc:
        log.warning("index manifest unreadable", extra={"fields": {"error": str(exc)}})
        return None


def add_references(index: ReferenceIndex, refs: Sequence[Reference], vectors: np.ndarray) -> None:
    index.add(
        np.array([r.id for r in refs], dtype=np.int64),
        vectors,
        brand_ids=np.array([r.brand_id for r in refs], dtype=np.int64),
        product_ids=np.array([r.product_id if r.product_id is not None else -1 for r in refs], dtype=np.int64),
        kinds=np.array([KIND_CODES[str(r.kind)] for r in refs], dtype=np.int8),
    )


def catalog_state(session: Session) -> list:
    """A fingerprint of the references table, one aggregate query: every insert changes the count or
    the newest creation time (an id the database hands out again after a delete comes with a newer
    one), every delete the count or the sum of ids."""
    count, total, top, newest = session.execute(
        select(func.count(Reference.id), func.coalesce(func.sum(Reference.id), 0), func.max(Reference.id),
               func.max(Reference.created_at))
    ).one()
    return [int(count), int(total), int(top or 0), _timestamp(newest)]


def _state_of(refs: Sequence[Reference]) -> list:
    """`catalog_state` of rows already read (the same snapshot as the rows, whatever the isolation level)."""
    newest = max((r.created_at for r in refs if r.created_at is not None), default=None)
    return [len(refs), sum(r.id for r in refs), max((r.id for r in refs), default=0), _timestamp(newest)]


def reconcile(
    home: Home, artifact: ModelArtifact, model: Embedder, current: ReferenceIndex | None = None,
    *, lock_wait_s: float | None = None,
) -> ReferenceIndex:
    """The index of `artifact` as the catalog stands now: `current` when it reflects the catalog, else
    the saved version when that does, else one rebuilt from the catalog (`sync_index`).

    A reader waits at most `lock_wait_s` for a writer (whose index save follows its commit at once);
    past that it repairs in memory and leaves the save to the writer."""
    with home.sessions() as session:
        state = catalog_state(session)
    if current is not None and current.extra.get("catalog") == state:
        return current
    directory = home.index_dir(artifact.tag)
    try:
        manifest = read_manifest(directory)
        if manifest is not None and manifest.get("catalog") == state:
            index = load_or_new(home, artifact)
            if index.extra.get("catalog") == state:
                return index
    except (IntegrityError, OSError, ValueError) as exc:
        log.warning("index unreadable, rebuilding it from the catalog", extra={"fields": {"error": str(exc)}})
    return sync_index(home, artifact, model, lock_wait_s=LOCK_WAIT_S if lock_wait_s is None else lock_wait_s)


def sync_index(
    home: Home, artifact: ModelArtifact, model: Embedder, *, batch_size: int = 32, lock_wait_s: float | None = None
) -> ReferenceIndex:
    """Bring the index of `artifact` in line with the catalog and save it with the catalog's state.

    Drops vectors the catalog lacks, or whose row differs (an id handed out again), embeds the rows the
    index lacks from their blobs. Saves under the write lock (waiting `lock_wait_s` at most, None:
    as long as it takes); without it, or when the save fails (a full disk), the reconciled index is
    returned all the same and served from memory.
    """
    directory = home.index_dir(artifact.tag)
    with home.write_lock(timeout_s=lock_wait_s) as locked:
        try:
            index = load_or_new(home, artifact)
        except (IntegrityError, OSError, ValueError) as exc:
            log.warning("index unreadable, rebuilding it from the catalog", extra={"fields": {"error": str(exc)}})
            index = ReferenceIndex(artifact.embedder.embedding_dim)
        with home.sessions() as session:
            refs = list(session.scalars(select(Reference).order_by(Reference.id)))
        state = _state_of(refs)
        recorded = index.extra.get("catalog")
        newest = _parse(recorded[3]) if isinstance(recorded, list) and len(recorded) == 4 else None
        have = {int(i): (int(b), int(p), int(k)) for i, b, p, k in
                zip(index.ids, index.brand_ids, index.product_ids, index.kinds, strict=True)}
        wanted = {r.id: (r.brand_id, r.product_id if r.product_id is not None else -1, KIND_CODES[str(r.kind)])
                  for r in refs}
        later = {r.id for r in refs if newest is not None and r.created_at is not None and _later(r.created_at, newest)}
        stale = {i for i, meta in have.items() if wanted.get(i) != meta or i in later}
        if stale:
            index.remove(np.array(sorted(stale), dtype=np.int64))
        missing = _with_blobs(home, [r for r in refs if r.id not in have or r.id in stale])
        for start in tqdm(range(0, len(missing), 256), desc="re-embedding references", disable=len(missing) < 64):
            chunk, images = _decoded(home, missing[start : start + 256])
            if chunk:
                add_references(index, chunk, embed_images(model, images, batch_size=batch_size))
        if locked and (stale or missing or recorded != state or _readable_manifest(directory) is None):
            try:
                index.save(directory, extra={"model_tag": artifact.tag, "catalog": state})
            except OSError as exc:
                log.error("could not save the reconciled index; serving it from memory",
                          extra={"fields": {"error": str(exc)}})
        index.extra = {"model_tag": artifact.tag, "catalog": state}
    return index


def commit_then_index(
    home: Home,
    session: Session,
    *,
    artifact: ModelArtifact | None = None,
    added: Sequence[Reference] = (),
    vectors: np.ndarray | None = None,
    removed: Sequence[int] = (),
) -> None:
    """Commit `session`'s catalog change, then apply it to the saved indexes: `added` rows (flushed, so
    with ids) with their `vectors` into `artifact`'s index, `removed` ids out of every index.

    The caller holds the home's write lock. The catalog commit is the write: when it fails nothing
    changed. A failure after it (the process killed, a full disk) is logged, not raised: the write is
    durable and acknowledged, and the next `reconcile` brings the index up to it.
    """
    with home.sessions() as other:  # the committed state, before this change
        before = catalog_state(other)
    added_ids = [r.id for r in added]
    session.commit()
    try:
        with home.sessions() as other:
            after = catalog_state(other)
        target = home.index_dir(artifact.tag) if artifact is not None and added else None
        doomed = np.array([*removed, *added_ids], dtype=np.int64)  # added: ids a crash may have left behind
        for directory in sorted({*index_dirs(home), *([target] if target is not None else [])}):
            try:
                exists = read_manifest(directory) is not None
            except IntegrityError as exc:  # left to the next `reconcile`, which rebuilds it
                log.error("index manifest unreadable; the next refresh rebuilds it",
                          extra={"fields": {"error": str(exc)}})
                continue
            if not exists and directory != target:
                continue
            index = ReferenceIndex.load(directory) if exists else ReferenceIndex(artifact.embedder.embedding_dim)
            recorded = index.extra.get("catalog") if exists else _EMPTY  # a new index holds the empty catalog
            changed = index.remove(doomed) > 0
            if directory == target:
                add_references(index, added, vectors)
                changed = True
            # the new state only where the index held the old one and now holds the whole change
            catalog = after if recorded == before and (directory == target or not added_ids) else recorded
            if changed or catalog != recorded:
                index.save(directory, extra={"model_tag": directory.name, "catalog": catalog})
    except (MarkguardError, OSError, ValueError) as exc:
        log.error("catalog committed, index not updated: the next refresh rebuilds it",
                  extra={"fields": {"error": str(exc)}})


_EMPTY = [0, 0, 0, None]


def index_dirs(home: Home) -> list[Path]:
    """Every model's index folder in `home` (saved or not yet), in name order."""
    root = home.root / "index"
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")) if root.is_dir() else []


def sweep_index_versions(home: Home, *, older_than: float) -> tuple[int, int]:
    """Remove index version files that no manifest names (one version back is kept for readers still
    loading it) and whose change time is before `older_than` (a Unix time): (files, bytes) removed.
    A folder whose manifest cannot be read is left to `reconcile`."""
    files = freed = 0
    for directory in index_dirs(home):
        try:
            manifest = read_manifest(directory)
        except Exception:  # noqa: BLE001 - an unreadable manifest: leave the folder to reconcile
            continue
        if manifest is None:
            continue
        keep = {int(manifest["version"]), int(manifest["version"]) - 1}
        for version, path in version_files(directory):
            if version in keep:
                continue
            try:
                stat = path.stat()
                if stat.st_mtime >= older_than:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            files += 1
            freed += stat.st_size
    return files, freed


def _with_blobs(home: Home, refs: list[Reference]) -> list[Reference]:
    """The rows whose blob can be read; one that cannot stays out of the index (logged), so a lost blob
    costs one reference, not the server."""
    kept = []
    for ref in refs:
        if home.blob_path(ref.sha256).is_file():
            kept.append(ref)
        else:
            log.error("reference has no blob; left out of the index", extra={"fields": {"reference_id": ref.id}})
    return kept


def _decoded(home: Home, refs: list[Reference]) -> tuple[list[Reference], list[np.ndarray]]:
    """The rows whose blob is intact and decodes, with its pixels; a corrupt one stays out of the index
    (logged), as a lost one does."""
    kept, images = [], []
    for ref in refs:
        try:
            images.append(decode_image(home.get_blob(ref.sha256)))
        except (IntegrityError, ImageError, OSError) as exc:
            log.error("reference blob is corrupt; left out of the index",
                      extra={"fields": {"reference_id": ref.id, "error": str(exc)}})
            continue
        kept.append(ref)
    return kept, images


def _timestamp(value: dt.datetime | str | None) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.datetime) else str(value)


def _parse(value: str | None) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _later(created: dt.datetime, newest: dt.datetime) -> bool:
    if (created.tzinfo is None) != (newest.tzinfo is None):
        created, newest = created.replace(tzinfo=None), newest.replace(tzinfo=None)
    return created > newest
