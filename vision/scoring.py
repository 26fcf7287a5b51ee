"""vision: scoring — signals → risk ∈ [0, 1] → decision, with the evidence that made it.

The fusion that turns signals into a risk is data in the model artifact (`fusion.json`), never
constants in code. Two kinds exist:

- `provisional`: risk falls linearly from 1 to 0 as the best genuine similarity for the claim rises
  from `similarity_floor` to `similarity_ceiling`. Used by the ImageNet baseline until a calibrated
  fusion is trained; results say `"provisional": true`.
- `logistic`: risk = sigmoid(bias + Σ weight·(value − mean)/scale) over named signals, fitted and
  calibrated on validation data by training. A signal that is missing contributes nothing.

Either kind carries `priors`: log-odds added per unit of an evidence signal that the calibration
data cannot show (OCR: a misspelt wordmark, an impossible serial, a serial reused by other sellers;
a copy of a known fake). They are expert weights, stored in the artifact beside the fitted ones and
reported per signal like every contribution, until calibration data lets training fit them: a fitted
signal's prior is ignored. Every signal of the registry (`vision.signals`) must be weighed, fitted
or by a prior: a `fusion.json` that forgets one is refused rather than silently ignoring it.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from markguard.vision.evidence import EmbeddingEvidence, KnownFakeEvidence, OcrEvidence
from markguard.vision.geometry import GeometryMatch, LocalFeatures, match_features
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.signals import SIGNALS

__all__ = [
    "Decision",
    "Fusion",
    "Policy",
    "Signal",
    "NamedScore",
    "Claim",
    "Match",
    "ScoreResult",
    "embedding_evidence",
    "region_evidence",
    "known_fake_evidence",
    "known_fake_ids",
    "claim_geometry",
    "GEOMETRY_REFERENCES",
]


def _best(index: ReferenceIndex, query: np.ndarray, **filters: Any) -> tuple[float, int] | None:
    """(similarity, reference id) of the nearest reference to any row of `query`, among those filtered."""
    hits = index.search(query, 1, **filters)
    found = hits.ids[:, 0] >= 0
    if not found.any():
        return None
    row = int(np.argmax(np.where(found, hits.similarities[:, 0], -np.inf)))
    return float(hits.similarities[row, 0]), int(hits.ids[row, 0])


def _similarity(found: tuple[float, int] | None) -> float | None:
    return None if found is None else found[0]


def _claim_mask(index: ReferenceIndex, brand_id: int, product_id: int | None) -> np.ndarray:
    claim = index.brand_ids == brand_id
    if product_id is not None:
        claim &= index.product_ids == product_id
    return claim


def embedding_evidence(
    index: ReferenceIndex, vector: np.ndarray, *, brand_id: int, product_id: int | None, region: int = 0
) -> EmbeddingEvidence:
    """What one region's embedding says about a claim (see `EmbeddingEvidence`)."""
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    genuine = _best(index, query, brand_id=brand_id, product_id=product_id, kind="genuine")
    outside = index.ids[~_claim_mask(index, brand_id, product_id) & (index.kinds == KIND_CODES["genuine"])]
    return EmbeddingEvidence(
        region=region,
        genuine_similarity=_similarity(genuine),
        rival_similarity=_similarity(_best(index, query, allowed_ids=outside)),
        counterfeit_similarity=_similarity(_best(index, query, brand_id=brand_id, kind="counterfeit")),
    )


def region_evidence(
    index: ReferenceIndex, vectors: np.ndarray, *, brand_id: int, product_id: int | None
) -> EmbeddingEvidence:
    """The embedding evidence of the region that best matches the claim's genuine references.

    The mark may fill 5% of a listing photo: each candidate region (the full photo first) is judged,
    and the one most similar to the claim's genuine references speaks for the photo."""
    vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, index.dim)
    per_region = [embedding_evidence(index, v, brand_id=brand_id, product_id=product_id, region=r)
                  for r, v in enumerate(vectors)]
    if not per_region:
        return EmbeddingEvidence(0, None, None, None)
    sims = [e.genuine_similarity if e.genuine_similarity is not None else -math.inf for e in per_region]
    return per_region[int(np.argmax(sims))]


def known_fake_ids(index: ReferenceIndex, *, brand_id: int, shared: Sequence[int] = ()) -> np.ndarray:
    """The known fakes a claim of `brand_id` is judged against: the brand's own counterfeit references and
    those other brands share with the alliance (`shared`, reference ids)."""
    own = index.ids[(index.brand_ids == brand_id) & (index.kinds == KIND_CODES["counterfeit"])]
    shared = np.asarray(list(shared), dtype=np.int64)
    shared = shared[np.isin(shared, index.ids[index.kinds == KIND_CODES["counterfeit"]])]
    return np.union1d(own, shared)


def known_fake_evidence(
    index: ReferenceIndex, vectors: np.ndarray, *, brand_id: int, product_id: int | None, shared: Sequence[int] = ()
) -> KnownFakeEvidence | None:
    """The nearest known fake (the brand's own, or one shared with the alliance) over every region, against
    the claim's nearest genuine reference; None when there is no known fake to judge against."""
    query = np.asarray(vectors, dtype=np.float32).reshape(-1, index.dim)
    fakes = known_fake_ids(index, brand_id=brand_id, shared=shared)
    fake = _best(index, query, allowed_ids=fakes) if fakes.size else None
    if fake is None:
        return None
    genuine = _best(index, query, brand_id=brand_id, product_id=product_id, kind="genuine")
    return KnownFakeEvidence(similarity=fake[0], genuine_similarity=_similarity(genuine), reference_id=fake[1])


GEOMETRY_REFERENCES = 3  # the claim's nearest genuine references checked for shape agreement


def claim_geometry(
    index: ReferenceIndex,
    vector: np.ndarray,
    query_features: Callable[[], LocalFeatures],
    reference_features: Callable[[int], LocalFeatures | None],
    *,
    brand_id: int,
    product_id: int | None,
    k: int = GEOMETRY_REFERENCES,
) -> tuple[GeometryMatch | None, dict[int, GeometryMatch]]:
    """Shape agreement of a claim: the photo's local features against the claim's `k` genuine
    references nearest to `vector` (the region that spoke for it). Training and serving both call this.
    Features are fetched through the callables, only when the claim has references to check.
    Returns the best-agreeing match (most inliers; None when the claim has no reference) and each
    checked reference id's match. A reference whose features are None (gone from the catalog since the
    index was read) is not checked."""
    hits = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k, brand_id=brand_id,
                        product_id=product_id, kind="genuine")
    ref_ids = [int(i) for i in hits.ids[0] if i >= 0]
    if not ref_ids:
        return None, {}
    features = {i: reference_features(i) for i in ref_ids}
    if all(f is None for f in features.values()):
        return None, {}
    query = query_features()
    found = {i: match_features(query, f) for i, f in features.items() if f is not None}
    return max(found.values(), key=lambda m: m.inliers), found


class Decision(enum.StrEnum):
    PASS = "pass"
    REVIEW = "review"
    TAKEDOWN = "takedown"


@dataclasses.dataclass(frozen=True)
class Signal:
    value: float | None
    contribution: float  # in the fusion's own units (risk for provisional, log-odds for logistic)


@dataclasses.dataclass(frozen=True)
class Policy:
    """Risk thresholds for a brand: defaults are the model's calibrated operating points."""

    review_at: float
    takedown_at: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.review_at <= self.takedown_at <= 1.0:
            raise ValueError(f"need 0 <= review_at <= takedown_at <= 1, got {self.review_at}, {self.takedown_at}")

    def decide(self, risk: float) -> Decision:
        if risk >= self.takedown_at:
            return Decision.TAKEDOWN
        if risk >= self.review_at:
            return Decision.REVIEW
        return Decision.PASS


class Fusion:
    """Reads `fusion.json`; `risk(signals)` returns the risk and each signal's contribution."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.kind = self.spec.get("kind")
        if self.kind not in ("provisional", "logistic"):
            raise ValueError(f"unknown fusion kind {self.kind!r}")
        self.policy = Policy(review_at=float(self.spec["review_at"]), takedown_at=float(self.spec["takedown_at"]))
        self.match_threshold = float(self.spec["match_threshold"])
        weighed = set(self.spec.get("priors") or {})
        weighed |= set(self.spec.get("signals", {})) if self.kind == "logistic" else {"genuine_similarity"}
        missing, unknown = sorted(set(SIGNALS) - weighed), sorted(weighed - set(SIGNALS))
        if missing:
            raise ValueError(f"fusion.json weighs no {', '.join(missing)}: every registered signal needs a fitted "
                             "weight or a prior (0 says 'no weight' explicitly); recalibrate, or give priors")
        if unknown:
            raise ValueError(f"fusion.json weighs signals nobody computes: {', '.join(unknown)}")

    @property
    def provisional(self) -> bool:
        return self.kind == "provisional"

    def risk(self, values: Mapping[str, float | None]) -> tuple[float, dict[str, Signal]]:
        risk, signals = self._provisional(values) if self.kind == "provisional" else self._logistic(values)
        fitted = self.spec.get("signals", {}) if self.kind == "logistic" else {}
        priors = {n: w for n, w in (self.spec.get("priors") or {}).items() if n not in fitted}
        present = {n: values.get(n) for n in priors if values.get(n) is not None}
        if not present:
            return risk, signals
        clipped = min(max(risk, 1e-6), 1 - 1e-6)
        logit = math.log(clipped / (1 - clipped))
        for name, value in present.items():
            contribution = float(priors[name]) * float(value)  # type: ignore[arg-type]
            logit += contribution
            signals[name] = Signal(value=value, contribution=contribution)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit)))), signals

    def _provisional(self, values: Mapping[str, float | None]) -> tuple[float, dict[str, Signal]]:
        lo, hi = float(self.spec["similarity_floor"]), float(self.spec["similarity_ceiling"])
        sim = values.get("genuine_similarity")
        risk = 1.0 if sim is None else min(1.0, max(0.0, (hi - sim) / (hi - lo)))
        signals = {name: Signal(value=v, contribution=0.0) for name, v in values.items()}
        signals["genuine_similarity"] = Signal(value=sim, contribution=risk)
        return risk, signals

    def _logistic(self, values: Mapping[str, float | None]) -> tuple[float, dict[str, Signal]]:
        logit = float(self.spec["bias"])
        signals: dict[str, Signal] = {}
        for name, params in self.spec["signals"].items():
            value = values.get(name)
            if value is None or not math.isfinite(value):
                contribution = 0.0
                value = None
            else:
                contribution = float(params["weight"]) * (value - float(params["mean"])) / float(params["scale"])
            logit += contribution
            signals[name] = Signal(value=value, contribution=contribution)
        for name, value in values.items():
            signals.setdefault(name, Signal(value=value, contribution=0.0))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, logit)))), signals


@dataclasses.dataclass(frozen=True)
class NamedScore:
    name: str | None
    score: float | None


@dataclasses.dataclass(frozen=True)
class Claim:
    brand: str | None
    product: str | None


@dataclasses.dataclass(frozen=True)
class Match:
    reference_id: int
    brand: str
    product: str | None
    kind: str
    similarity: float
    inliers: int | None = None
    box: tuple[int, int, int, int] | None = None  # the query region that matched, (x0, y0, x1, y1)


@dataclasses.dataclass
class ScoreResult:
    """The score JSON of ARCHITECTURE.md; `to_dict()` is what the CLI, API and batch scans emit."""

    risk: float
    decision: Decision
    brand: NamedScore
    product: NamedScore
    claimed: Claim
    matches: list[Match]
    signals: dict[str, Signal]
    model: str
    provisional: bool
    elapsed_ms: float = 0.0
    ocr: OcrEvidence = dataclasses.field(default_factory=OcrEvidence)
    duplicates: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the newest, capped
    duplicates_total: int = 0  # every earlier listing of the photo, however many `duplicates` shows
    image: str | None = None
    brand_id: int | None = dataclasses.field(default=None, compare=False, metadata={"json": False})  # the judged brand's catalog id (not in the JSON)

    def to_dict(self) -> dict[str, Any]:
        out = {"image": self.image} if self.image is not None else {}
        out.update(dataclasses.asdict(self))
        del out["brand_id"]
        out["ocr"] = self.ocr.to_dict()
        out["decision"] = self.decision.value
        if self.image is None:
            del out["image"]
        for match in out["matches"]:
            if match["box"] is not None:
                match["box"] = list(match["box"])
        return out
