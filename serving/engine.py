"""The scoring engine: the pipeline (`vision.pipeline.Scorer`) over this home's promoted model, its
index and its catalog, and the record of every listing it scores.

`CatalogEvidence` is the catalog's side of the pipeline (brand policy, wordmarks, serial registry and
reuse, reference features, hashes and verifier maps, earlier listings of the photo): reads only, each in
its own short session. `ScoringEngine.finish` judges a planned photo without any lock, then records the
listing (its row, its serials, its photo blob) in one short write, so a scored listing can be
reviewed whichever way it was scored (CLI, API or scan).
"""

from __future__ import annotations

import hmac
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sqlalchemy import or_, select

from markguard.serving.brands import get_brand, get_product
from markguard.serving.indexing import reconcile
from markguard.serving.listings import record_listing
from markguard.serving.registry import ensure_default_model
from markguard.serving.serials import serial_records
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing, Product, Reference
from markguard.vision.decode import decode_image
from markguard.vision.detect import MarkDetector
from markguard.vision.embed import embed_images
from markguard.vision.evidence import SerialRecord
from markguard.vision.geometry import LocalFeatures, extract_features
from markguard.vision.index import ReferenceIndex
from markguard.vision.ocr import OcrEngine, create_ocr_engine, shared_ocr_engine
from markguard.vision.phash import band_neighbours, hamming_many, phash
from markguard.vision.pipeline import BrandProfile, ListingClaim, OcrGate, ScorePlan, Scorer, ScoreRequest
from markguard.vision.runtime import RUNTIMES, onnx_forward, sign_cache_with
from markguard.vision.scoring import Fusion, ScoreResult
from markguard.vision.verify import MarkVerifier

__all__ = ["ScoringEngine", "ScoreRequest", "ScorePlan", "ListingClaim", "CatalogEvidence"]

_DUPLICATE_BITS = 8  # re-encoded, resized or 2%-cropped copies measured ≤ 10 bits apart; distinct photos ≥ 10, 1st percentile 20
_FEATURE_CACHE = 2048  # reference feature sets kept in memory
_MARK_CACHE = 4096  # reference verifier maps kept in memory (40 KB each: Lite0's 40x16x16 float32)
# whether the verifier compares a reference (`MarkVerifier.compares`, a detector pass: 63 ms against 5 ms
# for the map), kept longer than the maps: a bool each
_VERDICT_CACHE = 65536
MAX_DUPLICATES = 20  # earlier listings of the same photo named in a result (the newest)


def profile_of(row: Brand) -> BrandProfile:
    return BrandProfile(id=row.id, name=row.name, wordmarks=tuple(row.wordmarks or [row.name]),
                        serial_pattern=row.serial_pattern, serial_checksum=row.serial_checksum,
                        review_at=row.review_at, takedown_at=row.takedown_at)


class _Lru(OrderedDict):
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.lock = threading.Lock()

    def peek(self, key: Any) -> Any:
        """The cached value (marked as used), or None."""
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        return None

    def get_or(self, key: Any, make: Callable[[], Any]) -> Any:
        """The cached value, else `make()`'s, kept unless None (a miss that may not last)."""
        value = self.peek(key)  # never None when cached
        if value is not None:
            return value
        value = make()
        if value is None:
            return None
        with self.lock:
            self[key] = value
            if len(self) > self.size:
                self.popitem(last=False)
        return value


class CatalogEvidence:
    """The pipeline's `EvidenceSource` over a home's catalog and blobs; `verifier`: the model's mark
    verifier, which reads the reference maps (`reference_mark`), with the model's `detector` to tell which
    references are crops of a mark."""

    def __init__(self, home: Home, *, verifier: MarkVerifier | None = None, detector: MarkDetector | None = None) -> None:
        self.home = home
        self.verifier = verifier
        self.detector = detector
        self._features = _Lru(_FEATURE_CACHE)
        self._hashes_of_refs = _Lru(_FEATURE_CACHE)
        self._marks = _Lru(_MARK_CACHE)
        self._compares = _Lru(_VERDICT_CACHE)

    def resolve(self, brand: str | None, product: str | None) -> tuple[BrandProfile | None, int | None]:
        if brand is None:
            return None, None
        with self.home.sessions() as session:
            row = get_brand(session, brand)
            product_id = get_product(session, row, product).id if product is not None else None
            return profile_of(row), product_id

    def brand(self, brand_id: int) -> BrandProfile:
        with self.home.sessions() as session:
            return profile_of(session.get(Brand, brand_id))

    def product_name(self, product_id: int) -> str | None:
        with self.home.sessions() as session:
            row = session.get(Product, product_id)
            return row.name if row is not None else None

    def wordmarks(self) -> Mapping[str, Sequence[str]]:
        with self.home.sessions() as session:
            return {b.name: list(b.wordmarks or [b.name]) for b in session.scalars(select(Brand))}

    def serials(self, brand: BrandProfile | None, normalized: Sequence[str], *, seller: str | None,
                listing: str | None) -> list[SerialRecord]:
        if not normalized:
            return []
        with self.home.sessions() as session:
            return serial_records(session, self.home, brand_id=brand.id if brand else None, normalized=normalized,
                                  seller_id=seller, listing_id=listing)

    def _reference_sha(self, reference_id: int) -> str | None:
        with self.home.sessions() as session:
            return session.scalar(select(Reference.sha256).where(Reference.id == reference_id))

    # the caches are keyed by the photo's SHA-256, not the reference id: SQLite gives a deleted reference's
    # id to the next one, and a cached id would answer with the deleted photo's hash and features
    def reference_features(self, reference_id: int) -> LocalFeatures | None:
        sha = self._reference_sha(reference_id)
        return self._features.get_or(sha, lambda: self._blob_photo(sha, extract_features)) if sha else None

    def _blob_photo(self, sha: str, compute: Callable[[np.ndarray], Any]) -> Any:
        """`compute` of a reference's decoded photo; None when its blob is gone (a delete committed after
        the index was read: the index still holds its vector)."""
        try:
            return compute(decode_image(self.home.get_blob(sha)))
        except FileNotFoundError:
            return None

    def reference_hash(self, reference_id: int) -> int | None:
        sha = self._reference_sha(reference_id)
        return self._hashes_of_refs.get_or(sha, lambda: self._blob_photo(sha, lambda im: phash(im).int64)) if sha else None

    def reference_mark(self, reference_id: int) -> torch.Tensor | None:
        if self.verifier is None:
            raise RuntimeError("this catalog's model has no mark verifier")
        sha = self._reference_sha(reference_id)
        if sha is None or self._compares.peek(sha) is False:  # not compared: no photo to decode
            return None
        return self._marks.get_or(sha, lambda: self._blob_photo(sha, lambda photo: self._mark_of(sha, photo)))

    def _mark_of(self, sha: str, photo: np.ndarray) -> torch.Tensor | None:
        """`MarkVerifier.reference_map` with the verdict (a detector pass) kept in its own, longer cache."""
        assert self.verifier is not None
        if not self._compares.get_or(sha, lambda: self.verifier.compares(photo, self.detector)):
            return None
        return self.verifier.photo_map(photo)

    def reference_names(self, reference_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        if not reference_ids:
            return {}
        with self.home.sessions() as session:
            rows = session.execute(
                select(Reference.id, Brand.name, Product.name).join(Brand, Brand.id == Reference.brand_id)
                .outerjoin(Product, Product.id == Reference.product_id).where(Reference.id.in_(list(reference_ids)))
            ).all()
        return {int(r[0]): (r[1], r[2]) for r in rows}

    def duplicates(self, photo_hash: int, *, listing: str | None) -> tuple[list[dict[str, Any]], int]:
        # indexed lookups of the hash's bands (`vision.phash.band_neighbours`: ~720 values, a few in a
        # thousand of the listings come back), then the exact distance: no listing's hash is held in memory
        bands = (Listing.phash_b0, Listing.phash_b1, Listing.phash_b2)
        near = or_(*(column.in_(values) for column, values in
                     zip(bands, band_neighbours(photo_hash, _DUPLICATE_BITS), strict=True)))
        with self.home.sessions() as session:
            found_rows = session.execute(select(Listing.id, Listing.phash).where(near)).all()
            if not found_rows:
                return [], 0
            rows = np.array([r[0] for r in found_rows], np.int64)
            close = np.nonzero(hamming_many(photo_hash, np.array([r[1] for r in found_rows], np.int64)) <= _DUPLICATE_BITS)[0]
            candidates = sorted(rows[close].tolist(), reverse=True)  # newest first
            if listing is not None and candidates:  # the same listing scored again is not reuse
                itself = set(session.scalars(select(Listing.id).where(Listing.listing_id == listing)))
                candidates = [c for c in candidates if c not in itself]
            found: list[Listing] = []
            for start in range(0, len(candidates), 500):  # a photo listed thousands of times stays a small answer
                found += session.scalars(select(Listing).where(Listing.id.in_(candidates[start : start + 500]))
                                         .order_by(Listing.id.desc())).all()
                if len(found) >= MAX_DUPLICATES:
                    break
        shown = [{"listing_id": row.listing_id, "seller_id": row.seller_id,
                  "distance": int(hamming_many(photo_hash, np.array([row.phash], np.int64))[0]),
                  "scored_at": row.scored_at.isoformat()} for row in sorted(found[:MAX_DUPLICATES], key=lambda r: r.id)]
        return shown, len(candidates)

    def shared_known_fakes(self, brand: BrandProfile) -> list[int]:
        from markguard.serving.intelligence.sharing import shared_known_fakes

        with self.home.sessions() as session:
            return [f.reference_id for f in shared_known_fakes(session, exclude_brand_id=brand.id)]


class ScoringEngine:
    """`ocr=False` skips reading text (faster; the `ocr` part of results stays empty); `ocr_gate` reads
    it only where it can matter (`vision.pipeline.OcrGate`), else every photo is read.

    `runtime="onnx"` runs the embedder and the mark detector on ONNX Runtime where it is installed and
    equal to eager PyTorch within 1e-3 (`vision.runtime`), else on PyTorch; `self.runtime` says which.
    `on_ocr_seconds`, when given, is called with the seconds of every OCR read (not of cached photos).
    """

    def __init__(self, home: Home, *, device: str = "cpu", ocr: bool = True, ocr_budget_ms: float = 3000.0,
                 on_ocr_seconds: Callable[[float], None] | None = None, ocr_gate: OcrGate | None = None,
                 runtime: str = "torch") -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown runtime {runtime!r} (choose from {', '.join(RUNTIMES)})")
        self.home = home
        self.artifact = ensure_default_model(home)
        self.model = self.artifact.load_embedder(device=device, fuse=True)
        self._forward = None
        if runtime == "onnx":  # graphs cached by a process of this home are trusted, no one else's
            sign_cache_with(hmac.digest(home.secret(), b"markguard onnx cache", "sha256"))  # a key of its own
        if runtime == "onnx" and device == "cpu":
            size = self.model.config.input_size
            self._forward = onnx_forward(self.model, torch.rand(2, 3, size, size) * 2 - 1, outputs=("vectors",))
        detector = self.artifact.load_detector(device=device)
        if detector is not None and device == "cpu":
            detector.use_runtime(runtime)
        self.runtime = "onnx" if self._forward is not None else "torch"
        verifier = self.artifact.load_verifier()
        self.source = CatalogEvidence(home, verifier=verifier, detector=detector)
        self.scorer = Scorer(self.artifact, index=reconcile(home, self.artifact, self.model), source=self.source,
                             embed=self.embed, detector=detector, verifier=verifier,
                             ocr=self._ocr_engine(runtime) if ocr else None, ocr_budget_ms=ocr_budget_ms,
                             on_ocr_seconds=on_ocr_seconds, ocr_gate=ocr_gate if ocr else None)
        self._write = threading.Lock()

    @staticmethod
    def _ocr_engine(runtime: str) -> OcrEngine:
        """The process's shared EasyOCR, or on ONNX Runtime a private one whose CRAFT runs there (its
        lines equal eager PyTorch's on this project's photos; the recogniser stays on PyTorch)."""
        if runtime != "onnx":
            return shared_ocr_engine()
        engine = create_ocr_engine("easyocr-en")
        if hasattr(engine, "use_runtime"):
            engine.use_runtime(runtime)
        return engine

    def prepare(self) -> None:
        """Build what the first photo would build lazily: the OCR engine's runtime caches
        (`OcrEngine.prepare`). A bench calls it before its clock; a machine builds them once."""
        if self.scorer.ocr is not None:
            self.scorer.ocr.prepare()

    @property
    def model_tag(self) -> str:
        return self.artifact.tag

    @property
    def index(self) -> ReferenceIndex:
        return self.scorer.index

    @property
    def fusion(self) -> Fusion:
        return self.scorer.fusion

    @property
    def detector(self) -> MarkDetector | None:
        return self.scorer.detector

    @property
    def ocr(self) -> OcrEngine | None:
        return self.scorer.ocr

    @property
    def index_size(self) -> int:
        """Reference vectors in the loaded index."""
        return len(self.scorer.index)

    def refresh(self) -> None:
        """Follow the catalog: keep the index when it reflects the catalog (one aggregate query), else load
        the saved version that does, else rebuild it from the catalog (a writer died after its commit)."""
        self.scorer.index = reconcile(self.home, self.artifact, self.model, self.scorer.index)

    # -- the three steps ---------------------------------------------------------------------------
    def plan(self, request: ScoreRequest) -> ScorePlan:
        """Resolve the claim (unknown brand or product: NotFound), decode, read, propose regions, crop."""
        return self.scorer.plan(request)

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        # ONNX Runtime on one thread: batches of 8 crops ran 20% faster a crop than one batch of 96
        return embed_images(self.model, crops, forward=self._forward, batch_size=32 if self._forward is None else 8)

    def finish(self, plan: ScorePlan, vectors: np.ndarray, *, record: bool = True) -> ScoreResult:
        """Judge a planned photo, then (unless `record=False`) record the listing and keep its photo."""
        result = self.scorer.judge(plan, vectors)
        if record:
            self.record(plan, result)
        return result

    def score(self, request: ScoreRequest, *, record: bool = True) -> ScoreResult:
        return self.score_many([request], record=record)[0]

    def score_many(self, requests: Sequence[ScoreRequest], *, record: bool = True) -> list[ScoreResult]:
        """Score photos together (one batched forward pass for every region of every photo) and, unless
        `record=False`, record each as a listing."""
        self.refresh()
        plans = [self.plan(r) for r in requests]
        return [self.finish(p, v, record=record) for p, v in zip(plans, self.scorer.embed_plans(plans), strict=True)]

    # -- recording ---------------------------------------------------------------------------------
    def record(self, plan: ScorePlan, result: ScoreResult) -> Listing:
        """The listing row, its serials and its photo: a review can make it a reference later."""
        request = plan.request
        self.home.put_blob(request.data)  # content-addressed: idempotent, written before the row names it
        with self._write, self.home.sessions() as session:
            row = record_listing(session, self.home, result.to_dict(), listing_id=request.listing,
                                 seller_id=request.seller, sha256=request.sha256, photo_hash=plan.photo_hash,
                                 brand_id=result.brand_id)
            session.commit()
            session.refresh(row)
            session.expunge(row)
        return row
