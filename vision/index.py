"""vision: index — FAISS nearest-reference search over L2-normalised embeddings.

Inner product on unit vectors (= cosine similarity). Each vector carries its reference id, brand,
product and kind, so a search can be limited to a brand, a product or a kind with an id selector:
a filtered search never returns another brand's reference. Small sets use an exact flat index; the
structure is chosen by size in `_build` so larger sets can move to IVF without changing callers.

On disk an index is a folder of versions; `manifest.json`, written last by atomic replace, names the
current version's files with their SHA-256. A reader checks both before parsing, so a writer killed
mid-save leaves the previous version readable, and a tampered file is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import faiss
import numpy as np

from markguard.vision.atomic import atomic_write_bytes
from markguard.vision.errors import IntegrityError

__all__ = ["ReferenceIndex", "SearchResult", "KIND_CODES", "read_manifest", "version_files"]

KIND_CODES = {"genuine": 0, "counterfeit": 1}
_MANIFEST = "manifest.json"
_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """(n_queries, k) arrays; missing neighbours have id -1 and similarity -inf."""

    similarities: np.ndarray
    ids: np.ndarray


class ReferenceIndex:
    """Exact (flat) below `ivf_min` vectors; an inverted-file index with trained lists from there up.

    HNSW is not used: references are deleted, and HNSW cannot remove vectors.
    """

    ivf_min = 100_000  # vectors; below this exact search is fast enough (see `markguard bench index`)
    probe_fraction = 0.125  # of the lists visited per unfiltered IVF search (recall@10 in the bench)
    narrow_filter = 0.05  # a filter keeping less than this fraction of references searches every list

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.ids = np.empty(0, dtype=np.int64)
        self.brand_ids = np.empty(0, dtype=np.int64)
        self.product_ids = np.empty(0, dtype=np.int64)  # -1: no product
        self.kinds = np.empty(0, dtype=np.int8)
        self.version = 0
        self.extra: dict = {}  # what the saver recorded in the manifest beside the files (`save(extra=...)`)

    def __len__(self) -> int:
        return int(self.ids.size)

    def add(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        brand_ids: np.ndarray,
        product_ids: np.ndarray,
        kinds: np.ndarray,
    ) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n = ids.size
        if vectors.shape != (n, self.dim):
            raise ValueError(f"expected ({n}, {self.dim}) vectors, got {vectors.shape}")
        if not np.isfinite(vectors).all():
            raise ValueError("non-finite vectors")
        if np.unique(ids).size != n or np.isin(ids, self.ids).any():
            raise ValueError("duplicate reference ids")
        if n == 0:
            return
        if not self.is_ivf and len(self) + n >= self.ivf_min:
            self._to_ivf(extra=vectors, extra_ids=ids)
        else:
            self._index.add_with_ids(vectors, ids)
        self.ids = np.concatenate([self.ids, ids])
        self.brand_ids = np.concatenate([self.brand_ids, np.asarray(brand_ids, dtype=np.int64)])
        self.product_ids = np.concatenate([self.product_ids, np.asarray(product_ids, dtype=np.int64)])
        self.kinds = np.concatenate([self.kinds, np.asarray(kinds, dtype=np.int8)])

    @property
    def is_ivf(self) -> bool:
        return isinstance(self._index, faiss.IndexIVF)

    def _nprobe(self) -> int:
        return max(1, int(np.ceil(self.probe_fraction * self._index.nlist)))

    def _to_ivf(self, *, extra: np.ndarray, extra_ids: np.ndarray) -> None:
        """Move every vector into an IVF index whose lists are trained on them (k-means, ~4·√N lists)."""
        vectors = np.concatenate([self.vectors(self.ids), extra]) if len(self) else extra
        all_ids = np.concatenate([self.ids, extra_ids])
        nlist = int(4 * np.sqrt(len(vectors)))
        quantizer = faiss.IndexFlatIP(self.dim)
        ivf = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(len(vectors), size=min(len(vectors), 64 * nlist), replace=False)
        ivf.train(vectors[np.sort(sample)])
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct and remove by id
        ivf.add_with_ids(vectors, all_ids)
        quantizer.this.disown()  # the IVF index owns its quantizer from here
        ivf.own_fields = True
        self._index = ivf

    def remove(self, ids: np.ndarray) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        ids = ids[np.isin(ids, self.ids)]
        # An IVF index with a hash-table direct map removes only through an IDSelectorArray.
        selector = faiss.IDSelectorArray(ids) if self.is_ivf else faiss.IDSelectorBatch(ids)
        removed = int(self._index.remove_ids(selector)) if ids.size else 0
        keep = ~np.isin(self.ids, ids)
        self.ids, self.brand_ids = self.ids[keep], self.brand_ids[keep]
        self.product_ids, self.kinds = self.product_ids[keep], self.kinds[keep]
        return removed

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return np.stack([self._index.reconstruct(int(i)) for i in ids]) if ids.size else np.empty((0, self.dim), np.float32)

    def allowed_ids(
        self, *, brand_id: int | None = None, product_id: int | None = None, kind: str | None = None
    ) -> np.ndarray:
        mask = np.ones(self.ids.size, dtype=bool)
        if brand_id is not None:
            mask &= self.brand_ids == brand_id
        if product_id is not None:
            mask &= self.product_ids == product_id
        if kind is not None:
            mask &= self.kinds == KIND_CODES[kind]
        return self.ids[mask]

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        brand_id: int | None = None,
        product_id: int | None = None,
        kind: str | None = None,
        allowed_ids: np.ndarray | None = None,
    ) -> SearchResult:
        """Top-k by inner product, limited to references matching every filter given."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) queries, got {queries.shape}")
        n = queries.shape[0]
        params = None
        if brand_id is not None or product_id is not None or kind is not None or allowed_ids is not None:
            allowed = self.allowed_ids(brand_id=brand_id, product_id=product_id, kind=kind)
            if allowed_ids is not None:
                allowed = np.intersect1d(allowed, np.asarray(allowed_ids, dtype=np.int64))
            if allowed.size == 0:
                return _empty(n, k)
            selector = faiss.IDSelectorBatch(allowed)
            if self.is_ivf:  # visit more lists the narrower the filter: all of them below `narrow_filter`
                fraction = allowed.size / max(1, len(self))
                nlist = self._index.nlist
                nprobe = nlist if fraction < self.narrow_filter else min(nlist, int(np.ceil(self._nprobe() / fraction)))
                params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            else:
                params = faiss.SearchParameters(sel=selector)
            k_eff = min(k, int(allowed.size))
        else:
            k_eff = min(k, len(self))
            if self.is_ivf:
                params = faiss.SearchParametersIVF(nprobe=self._nprobe())
        if k_eff == 0:
            return _empty(n, k)
        sims, ids = self._index.search(queries, k_eff, params=params)
        sims = np.where(ids < 0, -np.inf, sims).astype(np.float32)
        if k_eff < k:
            pad = _empty(n, k - k_eff)
            sims, ids = np.hstack([sims, pad.similarities]), np.hstack([ids, pad.ids])
        return SearchResult(similarities=sims, ids=ids)

    def metadata(self, reference_id: int) -> tuple[int, int, int]:
        """(brand_id, product_id, kind code) of one reference."""
        (pos,) = np.nonzero(self.ids == reference_id)
        if pos.size == 0:
            raise KeyError(reference_id)
        i = int(pos[0])
        return int(self.brand_ids[i]), int(self.product_ids[i]), int(self.kinds[i])

    # -- persistence -----------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str], *, extra: dict | None = None) -> int:
        """Write a new version into `directory`, then point the manifest at it. Returns the version."""
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            previous = read_manifest(directory)
            last = previous["version"] if previous else 0
        except IntegrityError:  # unreadable: this save replaces it, past every version a file is left of
            previous = None
            last = max((v for v, _ in version_files(directory)), default=0)
        version = max(self.version, last) + 1
        index_bytes = faiss.serialize_index(self._index).tobytes()
        meta = io.BytesIO()
        np.savez(meta, ids=self.ids, brand_ids=self.brand_ids, product_ids=self.product_ids, kinds=self.kinds)
        files = {f"index-{version}.faiss": index_bytes, f"meta-{version}.npz": meta.getvalue()}
        for name, data in files.items():
            atomic_write_bytes(directory / name, data, mode=0o600)
        manifest = {
            "format": _FORMAT,
            "version": version,
            "dim": self.dim,
            "count": len(self),
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            **(extra or {}),
        }
        atomic_write_bytes(directory / _MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
                           mode=0o600)
        self.version = version
        self.extra = dict(extra or {})
        _remove_old_versions(directory, keep={version, previous["version"] if previous else version})
        return version

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, attempts: int = 5) -> ReferenceIndex:
        """Load the version the manifest names; if a writer removed it meanwhile, read the manifest again."""
        for attempt in range(attempts):
            try:
                return cls._load(Path(directory))
            except FileNotFoundError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, directory: Path) -> ReferenceIndex:
        manifest = read_manifest(directory)
        if manifest is None:
            raise IntegrityError(f"{directory}: no index manifest")
        blobs = {}
        for name, digest in manifest["files"].items():
            data = (directory / name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise IntegrityError(f"{directory / name}: checksum does not match the manifest")
            blobs[name.split("-", 1)[0]] = data
        index = cls(int(manifest["dim"]))
        index._index = faiss.deserialize_index(np.frombuffer(blobs["index"], dtype=np.uint8))
        with np.load(io.BytesIO(blobs["meta"]), allow_pickle=False) as meta:
            index.ids, index.brand_ids = meta["ids"], meta["brand_ids"]
            index.product_ids, index.kinds = meta["product_ids"], meta["kinds"]
        if index._index.ntotal != index.ids.size or index._index.d != index.dim:
            raise IntegrityError(f"{directory}: index and metadata disagree")
        index.version = int(manifest["version"])
        index.extra = {k: v for k, v in manifest.items() if k not in ("format", "version", "dim", "count", "files")}
        return index


def read_manifest(directory: str | os.PathLike[str]) -> dict | None:
    """The manifest of the index saved in `directory`, None when there is none. One that is not what
    `save` writes (not JSON, another shape, a file name outside the folder) is an IntegrityError naming
    it, never a bare parse error: a reader rebuilds the index from the catalog then."""
    path = Path(directory) / _MANIFEST
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(data.decode("utf-8"))
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise IntegrityError(f"{path}: unreadable index manifest ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise IntegrityError(f"{path}: index manifest is not a JSON object")
    if manifest.get("format") != _FORMAT:
        raise IntegrityError(f"{path}: unknown index format {manifest.get('format')!r}")
    for key in ("version", "dim", "count"):
        if not isinstance(manifest.get(key), int) or isinstance(manifest[key], bool) or manifest[key] < 0:
            raise IntegrityError(f"{path}: index manifest has no valid {key!r}")
    if manifest["dim"] < 1:
        raise IntegrityError(f"{path}: index manifest has no valid 'dim'")
    files = manifest.get("files")
    version = manifest["version"]
    expected = {f"index-{version}.faiss", f"meta-{version}.npz"}
    if not isinstance(files, dict) or set(files) != expected or not all(
            isinstance(d, str) and len(d) == 64 for d in files.values()):
        raise IntegrityError(f"{path}: index manifest does not name version {version}'s files with their SHA-256")
    return manifest


def _empty(n: int, k: int) -> SearchResult:
    return SearchResult(similarities=np.full((n, k), -np.inf, np.float32), ids=np.full((n, k), -1, np.int64))


def version_files(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(version, path) of every saved index version's file in `directory` (`index-N.faiss`, `meta-N.npz`),
    another writer's temporary files left out. The one place that knows how versions are named."""
    found = []
    for path in Path(directory).iterdir():
        if path.name.startswith("."):
            continue  # another writer's file in flight (`.*.tmp`); never a version
        kind, _, number = path.name.split(".", 1)[0].partition("-")
        if kind in ("index", "meta") and number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def _remove_old_versions(directory: Path, *, keep: set[int]) -> None:
    for version, path in version_files(directory):
        if version not in keep:
            path.unlink(missing_ok=True)
