"""The scoring engine: one loaded model, its index and the catalog, answering `score` calls.

It turns a photo and an optional claim into a `ScoreResult` (vision.scoring) and records the
listing. Created once per process (CLI run, BentoML worker); the index is reloaded when another
process saves a new version.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select

from markguard.serving.brands import get_brand, get_product
from markguard.serving.indexing import sync_index
from markguard.serving.models import ensure_default_model
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Brand, Listing, Product
from markguard.vision.decode import decode_image
from markguard.vision.embed import embed_images
from markguard.vision.index import KIND_CODES, ReferenceIndex, read_manifest
from markguard.vision.scoring import (
    SIGNAL_NAMES,
    Claim,
    Fusion,
    Match,
    NamedScore,
    Policy,
    ScoreResult,
    embedding_signals,
)

__all__ = ["ScoringEngine", "ScoreRequest"]

TOP_MATCHES = 5
_SEARCH_K = 50


class ScoreRequest:
    """One photo to score, with what the listing claims about it."""

    def __init__(
        self,
        data: bytes,
        *,
        brand: str | None = None,
        product: str | None = None,
        seller: str | None = None,
        listing: str | None = None,
        label: str | None = None,
    ) -> None:
        if product is not None and brand is None:
            raise ValueError("a product claim needs a brand claim")
        self.data, self.brand, self.product = data, brand, product
        self.seller, self.listing, self.label = seller, listing, label


class ScoringEngine:
    def __init__(self, home: Home, *, device: str = "cpu") -> None:
        self.home = home
        self.artifact = ensure_default_model(home)
        self.model = self.artifact.load_embedder(device=device)
        self.fusion = Fusion(self.artifact.fusion)
        self.index: ReferenceIndex = sync_index(home, self.artifact, self.model)
        self._names: dict[tuple[str, int], str] = {}

    @property
    def model_tag(self) -> str:
        return self.artifact.tag

    def refresh(self) -> None:
        """Reload the index if another process saved a newer version."""
        manifest = read_manifest(self.home.index_dir(self.model_tag))
        if manifest is not None and manifest["version"] != self.index.version:
            self.index = ReferenceIndex.load(self.home.index_dir(self.model_tag))

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        return embed_images(self.model, images)

    def score(self, request: ScoreRequest, *, record: bool = True) -> ScoreResult:
        return self.score_many([request], record=record)[0]

    def score_many(self, requests: Sequence[ScoreRequest], *, record: bool = True) -> list[ScoreResult]:
        """Score photos together: decoding per photo, one batched forward pass for all of them."""
        started = time.perf_counter()
        self.refresh()
        with self.home.sessions() as session:
            claims = [self._resolve_claim(session, r) for r in requests]  # unknown brand: fail first
        images = [decode_image(r.data) for r in requests]
        vectors = self.embed(images) if images else np.empty((0, self.model.config.embedding_dim))
        per_image_ms = (time.perf_counter() - started) * 1000 / max(1, len(requests))
        results = []
        with self.home.sessions() as session:
            for request, claim, vector in zip(requests, claims, vectors, strict=True):
                t0 = time.perf_counter()
                result = self._score_vector(session, vector, claim, request)
                result.elapsed_ms = round(per_image_ms + (time.perf_counter() - t0) * 1000, 2)
                if record:
                    self._record(session, request, result)
                results.append(result)
            session.commit()
        return results

    # -- internals ---------------------------------------------------------------------------------
    def _resolve_claim(self, session, request: ScoreRequest) -> tuple[Brand | None, Product | None]:  # type: ignore[no-untyped-def]
        if request.brand is None:
            return None, None
        brand = get_brand(session, request.brand)
        product = get_product(session, brand, request.product) if request.product else None
        return brand, product

    def _name(self, session, table: type[Brand] | type[Product], row_id: int) -> str:  # type: ignore[no-untyped-def]
        key = (table.__tablename__, row_id)
        if key not in self._names:
            self._names[key] = session.get(table, row_id).name
        return self._names[key]

    def _score_vector(self, session, vector: np.ndarray, claim, request: ScoreRequest) -> ScoreResult:  # type: ignore[no-untyped-def]
        brand, product = claim
        query = vector[None, :]
        hits = self.index.search(query, _SEARCH_K)
        matches = []
        for sim, ref_id in zip(hits.similarities[0], hits.ids[0], strict=True):
            if ref_id < 0 or len(matches) >= TOP_MATCHES:
                break
            b, p, k = self.index.metadata(int(ref_id))
            matches.append(
                Match(
                    reference_id=int(ref_id),
                    brand=self._name(session, Brand, b),
                    product=self._name(session, Product, p) if p >= 0 else None,
                    kind="genuine" if k == KIND_CODES["genuine"] else "counterfeit",
                    similarity=round(float(sim), 4),
                )
            )

        # Without a claim, judge the photo against the best-matching genuine brand and product.
        best = self.index.search(query, 1, kind="genuine")
        best_sim = float(best.similarities[0, 0]) if best.ids[0, 0] >= 0 else None
        if brand is None and best_sim is not None and best_sim >= self.fusion.match_threshold:
            b, p, _ = self.index.metadata(int(best.ids[0, 0]))
            brand = session.get(Brand, b)
            product = session.get(Product, p) if p >= 0 else None

        values: dict[str, float | None] = dict.fromkeys(SIGNAL_NAMES)
        brand_score = product_score = None
        if brand is not None:
            values = embedding_signals(self.index, vector, brand_id=brand.id, product_id=product.id if product else None)
            brand_score = self._best(query, brand_id=brand.id, kind="genuine")
            product_score = values["genuine_similarity"] if product is not None else None
            if product is None:  # a brand-only claim: name the brand's best-matching product
                best_in_brand = self.index.search(query, 1, brand_id=brand.id, kind="genuine")
                if best_in_brand.ids[0, 0] >= 0:
                    _, p, _ = self.index.metadata(int(best_in_brand.ids[0, 0]))
                    product = session.get(Product, p) if p >= 0 else None
                    product_score = float(best_in_brand.similarities[0, 0]) if product else None
        risk, signals = self.fusion.risk(values)
        policy = self._policy(brand)
        return ScoreResult(
            risk=round(risk, 4),
            decision=policy.decide(risk),
            brand=NamedScore(name=brand.name if brand else None, score=_round(brand_score)),
            product=NamedScore(name=product.name if product else None, score=_round(product_score)),
            claimed=Claim(brand=request.brand, product=request.product),
            matches=matches,
            signals=signals,
            model=self.model_tag,
            provisional=self.fusion.provisional,
            image=request.label,
        )

    def _best(self, query: np.ndarray, **filters: int | str | None) -> float | None:
        hits = self.index.search(query, 1, **filters)  # type: ignore[arg-type]
        return float(hits.similarities[0, 0]) if hits.ids[0, 0] >= 0 else None

    def _policy(self, brand: Brand | None) -> Policy:
        default = self.fusion.policy
        if brand is None:
            return default
        return Policy(
            review_at=brand.review_at if brand.review_at is not None else default.review_at,
            takedown_at=brand.takedown_at if brand.takedown_at is not None else default.takedown_at,
        )

    def _record(self, session, request: ScoreRequest, result: ScoreResult) -> None:  # type: ignore[no-untyped-def]
        brand_id = None
        if result.brand.name is not None:
            brand_id = session.scalar(select(Brand.id).where(Brand.name == result.brand.name))
        session.add(
            Listing(
                listing_id=request.listing,
                seller_id=request.seller,
                brand_id=brand_id,
                image_sha256=hashlib.sha256(request.data).hexdigest(),
                phash=None,
                risk=result.risk,
                decision=result.decision.value,
                model_tag=result.model,
                result={"risk": result.risk, "decision": result.decision.value},
            )
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)

