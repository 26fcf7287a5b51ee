"""Keeping a model's FAISS index in step with the catalog.

The catalog is the truth; an index is derived from it and the blobs. `sync_index` adds what the
index lacks (embedding the blobs, with progress) and drops what the catalog no longer has. That one
mechanism re-embeds references when a new model is promoted and repairs an index left behind by a
crash between an index save and a catalog commit.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import select
from tqdm import tqdm

from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference
from markguard.vision.artifact import ModelArtifact
from markguard.vision.decode import decode_image
from markguard.vision.embed import Embedder, embed_images
from markguard.vision.index import KIND_CODES, ReferenceIndex, read_manifest

__all__ = ["load_or_new", "sync_index", "add_references"]


def load_or_new(home: Home, artifact: ModelArtifact) -> ReferenceIndex:
    directory = home.index_dir(artifact.tag)
    if read_manifest(directory) is None:
        return ReferenceIndex(artifact.embedder.embedding_dim)
    return ReferenceIndex.load(directory)


def add_references(index: ReferenceIndex, refs: list[Reference], vectors: np.ndarray) -> None:
    index.add(
        np.array([r.id for r in refs], dtype=np.int64),
        vectors,
        brand_ids=np.array([r.brand_id for r in refs], dtype=np.int64),
        product_ids=np.array([r.product_id if r.product_id is not None else -1 for r in refs], dtype=np.int64),
        kinds=np.array([KIND_CODES[str(r.kind)] for r in refs], dtype=np.int8),
    )


def sync_index(home: Home, artifact: ModelArtifact, model: Embedder, *, batch_size: int = 32) -> ReferenceIndex:
    """Bring the index of `artifact` in line with the catalog; saves only when something changed."""
    with home.write_lock():
        index = load_or_new(home, artifact)
        with home.sessions() as session:
            refs = list(session.scalars(select(Reference).order_by(Reference.id)))
        catalog_ids = np.array([r.id for r in refs], dtype=np.int64)
        extra = index.ids[~np.isin(index.ids, catalog_ids)]
        missing = [r for r, present in zip(refs, np.isin(catalog_ids, index.ids), strict=True) if not present]
        if extra.size:
            index.remove(extra)
        for start in tqdm(range(0, len(missing), 256), desc="re-embedding references", disable=len(missing) < 64):
            chunk = missing[start : start + 256]
            images = [decode_image(home.get_blob(r.sha256)) for r in chunk]
            add_references(index, chunk, embed_images(model, images, batch_size=batch_size))
        if extra.size or missing or read_manifest(home.index_dir(artifact.tag)) is None:
            index.save(home.index_dir(artifact.tag), extra={"model_tag": artifact.tag})
    return index
