"""The scoring engine: one loaded model, its index and the catalog, answering `score` calls.

A photo goes through three steps, split so that a server can batch the middle one across requests:
`plan` (decode, candidate regions, crops) → `embed` (one forward pass for many crops) → `finish`
(search, geometry, photo reuse, fusion, decision, record). `score_many` runs all three.
Each fresh OCR read is timed and handed to `on_ocr_seconds` (the service's metric), so callers observe
OCR time without wrapping the reader.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.brands import get_brand, get_product
from markguard.serving.indexing import reconcile
from markguard.serving.models import OCR_PRIORS, ensure_default_model
from markguard.serving.serials import ocr_evidence, record_serials, serials_to_record
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing, Product, Reference
from markguard.vision.decode import decode_image
from markguard.vision.embed import embed_images
from markguard.vision.geometry import LocalFeatures, extract_features, match_features
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.ocr import OcrEngine, OcrLine, shared_ocr_engine
from markguard.vision.phash import hamming_many, phash
from markguard.vision.regions import Region, region_crops
from markguard.vision.scoring import (
    SIGNAL_NAMES,
    Claim,
    Fusion,
    Match,
    NamedScore,
    Policy,
    ScoreResult,
    claim_geometry,
    ocr_signals,
    region_signals,
)

__all__ = ["ScoringEngine", "ScoreRequest", "ScorePlan", "ListingClaim"]

TOP_MATCHES = 5
_SEARCH_K = 20  # neighbours per region before merging
_RERANK = 5  # an unclaimed photo's nearest genuine references re-ranked by geometry
_DUPLICATE_BITS = 8  # re-encoded, resized or 2%-cropped copies measured ≤ 10 bits apart; distinct photos ≥ 10, 1st percentile 20
_FEATURE_CACHE = 2048  # reference feature sets kept in memory
_OCR_CACHE = 256  # photos whose OCR lines are kept (keyed by content hash)
_MAX_DUPLICATES = 20  # earlier listings named in a score's `duplicates` (the newest)


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """One photo to score, with what the listing claims about it."""

    data: bytes
    brand: str | None = None
    product: str | None = None
    seller: str | None = None
    listing: str | None = None
    title: str | None = None  # the listing's title: stored with the listing, echoed as `claimed.title`
    label: str | None = None  # how the caller names the photo (a path); echoed as `image`

    def __post_init__(self) -> None:
        if self.product is not None and self.brand is None:
            raise ValueError("a product claim needs a brand claim")


@dataclasses.dataclass
class ScorePlan:
    request: ScoreRequest
    brand_id: int | None
    product_id: int | None
    image: np.ndarray
    regions: list[Region]
    crops: list[np.ndarray]
    started: float
    ocr_lines: list[OcrLine] | None = None  # None: OCR is off for this engine
    features: LocalFeatures | None = None  # the photo's local features, extracted when first needed
    ocr_seconds: float = 0.0  # time spent reading this photo's text (0 when OCR is off or cached)


@dataclasses.dataclass(frozen=True)
class ListingClaim(Claim):
    """What a listing claims, with its title: `claimed` {`brand`, `product`, `title`} in the score JSON."""

    title: str | None = None


class ScoringEngine:
    """`ocr=False` skips reading text (faster; the `ocr` part of results stays empty).

    `on_ocr_seconds`, when given, is called with the seconds of every OCR read (not of cached photos).
    """

    def __init__(self, home: Home, *, device: str = "cpu", ocr: bool = True, ocr_budget_ms: float = 3000.0,
                 on_ocr_seconds: Callable[[float], None] | None = None) -> None:
        self.home = home
        self.artifact = ensure_default_model(home)
        self.model = self.artifact.load_embedder(device=device, fuse=True)
        self.detector = self.artifact.load_detector(device=device)  # None: saliency and window regions only
        self.fusion = Fusion({"priors": OCR_PRIORS, **self.artifact.fusion})
        self.ocr: OcrEngine | None = shared_ocr_engine() if ocr else None
        self.ocr_budget_ms = ocr_budget_ms
        self.on_ocr_seconds = on_ocr_seconds
        self.max_regions = self.artifact.max_regions
        self.index: ReferenceIndex = reconcile(home, self.artifact, self.model)  # rebuilt if it lags the catalog
        self._features: OrderedDict[int, LocalFeatures] = OrderedDict()
        self._ocr_cache: OrderedDict[str, list[OcrLine]] = OrderedDict()
        self._hashes = np.empty(0, dtype=np.int64)
        self._hash_rows = np.empty(0, dtype=np.int64)
        self._lock = threading.Lock()

    @property
    def model_tag(self) -> str:
        return self.artifact.tag

    @property
    def index_size(self) -> int:
        """Reference vectors in the loaded index."""
        return len(self.index)

    def refresh(self) -> None:
        """Follow the catalog: keep the index when it reflects the catalog (one aggregate query), else load
        the saved version that does, else rebuild it from the catalog (a writer died after its commit)."""
        self.index = reconcile(self.home, self.artifact, self.model, self.index)

    # -- the three steps ---------------------------------------------------------------------------
    def plan(self, request: ScoreRequest) -> ScorePlan:
        """Resolve the claim (unknown brand or product: NotFound), decode, propose regions, crop."""
        started = time.perf_counter()
        brand_id = product_id = None
        if request.brand is not None:
            with self.home.sessions() as session:
                brand = get_brand(session, request.brand)
                brand_id = brand.id
                if request.product is not None:
                    product_id = get_product(session, brand, request.product).id
        image = decode_image(request.data)
        lines, ocr_seconds = self._read_text(request.data, image) if self.ocr is not None else (None, 0.0)
        text_boxes = [line.box for line in lines or []]
        mark_boxes = [d.box for d in self.detector.detect([image])[0]] if self.detector is not None else []
        regions, crops = region_crops(image, max_regions=self.max_regions, mark_boxes=mark_boxes, text_boxes=text_boxes)
        return ScorePlan(request, brand_id, product_id, image, regions, crops, started, lines, ocr_seconds=ocr_seconds)

    def _read_text(self, data: bytes, image: np.ndarray) -> tuple[list[OcrLine], float]:
        """(OCR lines, seconds spent reading) of a photo; the same photo scored again (another claim, a
        retry) is read once, and its cached lines cost 0 seconds."""
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            if key in self._ocr_cache:
                self._ocr_cache.move_to_end(key)
                return self._ocr_cache[key], 0.0
        started = time.perf_counter()
        lines = self.ocr.read(image, budget_ms=self.ocr_budget_ms)
        seconds = time.perf_counter() - started
        if self.on_ocr_seconds is not None:
            self.on_ocr_seconds(seconds)
        with self._lock:
            self._ocr_cache[key] = lines
            if len(self._ocr_cache) > _OCR_CACHE:
                self._ocr_cache.popitem(last=False)
        return lines, seconds

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        return embed_images(self.model, crops)

    def finish(self, plan: ScorePlan, vectors: np.ndarray, *, record: bool = True) -> ScoreResult:
        with self._lock:  # the catalog session and caches are per engine; searches are cheap
            with self.home.sessions() as session:
                result, brand_id = self._finish(session, plan, vectors)
                if record:
                    row = self._record(session, plan, result, brand_id=brand_id)
                    if result.ocr["serials"]:
                        record_serials(session, self.home, listing_row_id=row.id, brand_id=row.brand_id,
                                       normalized_serials=serials_to_record(result.ocr))
                session.commit()
        result.elapsed_ms = round((time.perf_counter() - plan.started) * 1000, 2)
        return result

    def score(self, request: ScoreRequest, *, record: bool = True) -> ScoreResult:
        return self.score_many([request], record=record)[0]

    def score_many(self, requests: Sequence[ScoreRequest], *, record: bool = True) -> list[ScoreResult]:
        """Score photos together: one batched forward pass for every region of every photo."""
        self.refresh()
        plans = [self.plan(r) for r in requests]
        vectors = self.embed([c for p in plans for c in p.crops])
        results, start = [], 0
        for plan in plans:
            results.append(self.finish(plan, vectors[start : start + len(plan.crops)], record=record))
            start += len(plan.crops)
        return results

    # -- internals ---------------------------------------------------------------------------------
    def _finish(self, session: Session, plan: ScorePlan, vectors: np.ndarray) -> tuple[ScoreResult, int | None]:
        """The result and the id of the brand it judged (claimed or best-matching; None: no brand)."""
        request, index = plan.request, self.index
        matches = self._matches(session, plan, vectors)
        brand_id, product_id = plan.brand_id, plan.product_id
        if brand_id is None:  # no claim: judge the photo against the best-matching genuine reference
            best = self._verified_best(plan, vectors)
            if best is not None:
                brand_id, product_id, _ = index.metadata(best)
                product_id = product_id if product_id >= 0 else None

        values: dict[str, float | None] = dict.fromkeys(SIGNAL_NAMES)
        brand_score = product_score = None
        if brand_id is not None:
            embedding, region = region_signals(index, vectors, brand_id=brand_id, product_id=product_id)
            values.update(embedding)
            values.update(self._geometry(plan, vectors[region : region + 1], brand_id=brand_id,
                                         product_id=product_id, matches=matches))
            brand_best = self._nearest(vectors, brand_id=brand_id, kind="genuine")
            brand_score = brand_best[0] if brand_best else None
        brand = session.get(Brand, brand_id) if brand_id is not None else None
        ocr = {"lines": [], "wordmarks": [], "serials": []}
        if plan.ocr_lines is not None:
            ocr = ocr_evidence(session, self.home, self.ocr, plan.image, brand=brand, lines=plan.ocr_lines,
                               seller_id=request.seller, listing_id=request.listing)
            values.update(ocr_signals(ocr, brand=brand.name if brand else None))
        if brand_id is not None:
            if product_id is not None:
                product_score = values["genuine_similarity"]
            else:  # a brand-only claim: name the brand's best-matching product
                if brand_best is not None and index.metadata(brand_best[1])[1] >= 0:
                    product_id = index.metadata(brand_best[1])[1]
                    product_score = brand_score
        risk, signals = self.fusion.risk(values)
        product = session.get(Product, product_id) if product_id is not None else None
        claimed = (Claim(brand=request.brand, product=request.product) if request.title is None else
                   ListingClaim(brand=request.brand, product=request.product, title=request.title))
        return ScoreResult(
            risk=round(risk, 4),
            decision=self._policy(brand).decide(risk),
            brand=NamedScore(name=brand.name if brand else None, score=_round(brand_score)),
            product=NamedScore(name=product.name if product else None, score=_round(product_score)),
            claimed=claimed,
            matches=matches,
            signals=signals,
            model=self.model_tag,
            provisional=self.fusion.provisional,
            duplicates=self._duplicates(session, plan),
            ocr=ocr,
            image=request.label,
        ), brand_id

    def _matches(self, session: Session, plan: ScorePlan, vectors: np.ndarray) -> list[Match]:
        """Top references over all regions, each with the region that matched it best."""
        hits = self.index.search(vectors, _SEARCH_K)
        best: dict[int, tuple[float, int]] = {}
        for region, (sims, ids) in enumerate(zip(hits.similarities, hits.ids, strict=True)):
            for sim, ref_id in zip(sims, ids, strict=True):
                if ref_id >= 0 and float(sim) > best.get(int(ref_id), (-np.inf, 0))[0]:
                    best[int(ref_id)] = (float(sim), region)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:TOP_MATCHES]
        matches = []
        for ref_id, (sim, region) in ranked:
            b, p, k = self.index.metadata(ref_id)
            matches.append(
                Match(
                    reference_id=ref_id,
                    brand=self._name(session, Brand, b),
                    product=self._name(session, Product, p) if p >= 0 else None,
                    kind="genuine" if k == KIND_CODES["genuine"] else "counterfeit",
                    similarity=round(sim, 4),
                    box=tuple(int(v) for v in plan.regions[region].box),
                )
            )
        return matches

    def _verified_best(self, plan: ScorePlan, vectors: np.ndarray) -> int | None:
        """The best genuine reference for an unclaimed photo: the embedding's nearest few, re-ranked
        by geometric verification (spatial re-ranking, as in Philbin et al. 2007). A reference whose
        shape agrees (an accepted homography) outranks one that only looks alike; among equals, the
        more similar wins. Below the model's match threshold nothing is a match."""
        hits = self.index.search(vectors, _RERANK, kind="genuine")
        best_sim: dict[int, float] = {}
        for sims, ids in zip(hits.similarities, hits.ids, strict=True):
            for sim, ref_id in zip(sims, ids, strict=True):
                if ref_id >= 0 and float(sim) >= self.fusion.match_threshold:
                    best_sim[int(ref_id)] = max(best_sim.get(int(ref_id), -1.0), float(sim))
        if not best_sim:
            return None
        candidates = sorted(best_sim, key=lambda i: -best_sim[i])[:_RERANK]
        query = self._query_features(plan)
        inliers = {i: match_features(query, self._reference_features(i)).inliers for i in candidates}
        return max(candidates, key=lambda i: (inliers[i], best_sim[i]))

    def _query_features(self, plan: ScorePlan) -> LocalFeatures:
        if plan.features is None:
            plan.features = extract_features(plan.image)
        return plan.features

    def _geometry(
        self, plan: ScorePlan, vector: np.ndarray, *, brand_id: int, product_id: int | None, matches: list[Match]
    ) -> dict[str, float | None]:
        """Shape agreement between the photo and the claim's references nearest to its best region."""
        values, by_id = claim_geometry(self.index, vector, lambda: self._query_features(plan),
                                       self._reference_features, brand_id=brand_id, product_id=product_id)
        for i, match in enumerate(matches):
            if match.reference_id in by_id:
                matches[i] = dataclasses.replace(match, inliers=by_id[match.reference_id].inliers)
        return values

    def _reference_features(self, reference_id: int) -> LocalFeatures:
        if reference_id in self._features:
            self._features.move_to_end(reference_id)
            return self._features[reference_id]
        with self.home.sessions() as session:
            sha = session.scalar(select(Reference.sha256).where(Reference.id == reference_id))
        features = extract_features(decode_image(self.home.get_blob(sha)))
        self._features[reference_id] = features
        if len(self._features) > _FEATURE_CACHE:
            self._features.popitem(last=False)
        return features

    def _duplicates(self, session: Session, plan: ScorePlan) -> list[dict]:
        """Earlier listings that showed the same photo, or a near copy, under another listing id: the
        `_MAX_DUPLICATES` newest, oldest first (a photo listed thousands of times stays a small answer)."""
        self._load_hashes(session)
        if not self._hashes.size:
            return []
        query = phash(plan.image)
        close = np.nonzero(hamming_many(query, self._hashes) <= _DUPLICATE_BITS)[0]
        candidates = sorted(self._hash_rows[close].tolist(), reverse=True)  # newest first
        rows: list[Listing] = []
        for start in range(0, len(candidates), 500):
            for row in session.scalars(select(Listing).where(Listing.id.in_(candidates[start : start + 500]))
                                       .order_by(Listing.id.desc())):
                if plan.request.listing is None or row.listing_id != plan.request.listing:  # itself is not reuse
                    rows.append(row)
            if len(rows) >= _MAX_DUPLICATES:
                break
        out = []
        for row in sorted(rows[:_MAX_DUPLICATES], key=lambda r: r.id):
            out.append({"listing_id": row.listing_id, "seller_id": row.seller_id,
                        "distance": int(hamming_many(query, np.array([row.phash], np.int64))[0]),
                        "scored_at": row.scored_at.isoformat()})
        return out

    def _load_hashes(self, session: Session) -> None:
        last = int(self._hash_rows[-1]) if self._hash_rows.size else 0
        rows = session.execute(
            select(Listing.id, Listing.phash).where(Listing.id > last, Listing.phash.is_not(None)).order_by(Listing.id)
        ).all()
        if rows:
            self._hash_rows = np.concatenate([self._hash_rows, np.array([r[0] for r in rows], np.int64)])
            self._hashes = np.concatenate([self._hashes, np.array([r[1] for r in rows], np.int64)])

    def _nearest(self, vectors: np.ndarray, **filters: int | str | None) -> tuple[float, int] | None:
        """(similarity, reference id) of the nearest reference to any region, among those filtered."""
        hits = self.index.search(vectors, 1, **filters)  # type: ignore[arg-type]
        if not (hits.ids[:, 0] >= 0).any():
            return None
        best = int(np.argmax(hits.similarities[:, 0]))
        return float(hits.similarities[best, 0]), int(hits.ids[best, 0])

    def _name(self, session: Session, table: type[Brand] | type[Product], row_id: int) -> str:
        return session.get(table, row_id).name

    def _policy(self, brand: Brand | None) -> Policy:
        default = self.fusion.policy
        if brand is None:
            return default
        return Policy(
            review_at=brand.review_at if brand.review_at is not None else default.review_at,
            takedown_at=brand.takedown_at if brand.takedown_at is not None else default.takedown_at,
        )

    def _record(self, session: Session, plan: ScorePlan, result: ScoreResult, *, brand_id: int | None) -> Listing:
        summary = {"risk": result.risk, "decision": result.decision.value}
        if plan.request.title is not None:
            summary["title"] = plan.request.title
        row = Listing(
                listing_id=plan.request.listing,
                seller_id=plan.request.seller,
                brand_id=brand_id,
                image_sha256=hashlib.sha256(plan.request.data).hexdigest(),
                phash=phash(plan.image).int64,
                risk=result.risk,
                decision=result.decision.value,
                model_tag=result.model,
                result=summary,
        )
        session.add(row)
        session.flush()
        return row


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
