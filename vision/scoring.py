"""vision: scoring — signals → risk ∈ [0, 1] → decision, with the evidence that made it.

The fusion that turns signals into a risk is data in the model artifact (`fusion.json`), never
constants in code. Two kinds exist:

- `provisional`: risk falls linearly from 1 to 0 as the best genuine similarity for the claim rises
  from `similarity_floor` to `similarity_ceiling`. Used by the ImageNet baseline until a calibrated
  fusion is trained; results say `"provisional": true`.
- `logistic`: risk = sigmoid(bias + Σ weight·(value − mean)/scale) over named signals, fitted and
  calibrated on validation data by training. A signal that is missing contributes nothing.

Either kind may carry `priors`: log-odds added per unit of an evidence signal that the calibration
data cannot show (OCR: a misspelt wordmark, an impossible serial, a serial reused by other sellers).
They are expert weights, stored in the artifact beside the fitted ones and reported per signal like
every contribution, until calibration data lets training fit them: a fitted signal's prior is ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from markguard.vision.geometry import GeometryMatch, LocalFeatures, match_features
from markguard.vision.index import KIND_CODES, ReferenceIndex

__all__ = [
    "Decision",
    "Fusion",
    "Policy",
    "Signal",
    "NamedScore",
    "Claim",
    "Match",
    "ScoreResult",
    "embedding_signals",
    "region_signals",
    "geometry_signals",
    "claim_geometry",
    "GEOMETRY_REFERENCES",
    "ocr_signals",
    "SIGNAL_DIRECTIONS",
    "SIGNAL_NAMES",
    "OCR_SIGNAL_NAMES",
]

# Signals a fusion may use: embedding (per best region), geometry, then OCR's (vision.text).
SIGNAL_NAMES = ("genuine_similarity", "margin", "counterfeit_similarity", "log_inliers", "inlier_ratio")


def _best(index: ReferenceIndex, query: np.ndarray, **filters: Any) -> float | None:
    hits = index.search(query, 1, **filters)
    return float(hits.similarities[0, 0]) if hits.ids[0, 0] >= 0 else None


def embedding_signals(
    index: ReferenceIndex, vector: np.ndarray, *, brand_id: int, product_id: int | None
) -> dict[str, float | None]:
    """What the embedding says about a claim: training (calibration) and serving both call this.

    - genuine_similarity: best similarity to the claim's genuine references (product if claimed);
    - margin: that minus the best similarity to any genuine reference outside the claim;
    - counterfeit_similarity: best similarity to the brand's known fakes.
    """
    query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
    genuine = _best(index, query, brand_id=brand_id, product_id=product_id, kind="genuine")
    claim = index.brand_ids == brand_id
    if product_id is not None:
        claim &= index.product_ids == product_id
    outside = index.ids[~claim & (index.kinds == KIND_CODES["genuine"])]
    rival = _best(index, query, allowed_ids=outside)
    return {
        "genuine_similarity": genuine,
        "margin": None if genuine is None or rival is None else genuine - rival,
        "counterfeit_similarity": _best(index, query, brand_id=brand_id, kind="counterfeit"),
    }


OCR_SIGNAL_NAMES = (
    "wordmark_exact",
    "wordmark_near_miss",
    "other_brand_wordmark",
    "serial_invalid",
    "serial_unregistered",
    "serial_reuse_sellers",
)


# How each signal should move the risk (+1: up). Calibration keeps a fitted weight only when its sign
# agrees: with collinear signals, or few and noisy reads, a fit can turn a misspelt wordmark into
# evidence of a genuine product, and such a weight would not hold on photos it never saw.
SIGNAL_DIRECTIONS = {
    "genuine_similarity": -1, "margin": -1, "counterfeit_similarity": +1, "log_inliers": -1, "inlier_ratio": -1,
    "wordmark_exact": -1, "wordmark_near_miss": +1, "other_brand_wordmark": +1, "serial_invalid": +1,
    "serial_unregistered": +1, "serial_reuse_sellers": +1,
}


def ocr_signals(ocr: Mapping[str, Any], *, brand: str | None) -> dict[str, float | None]:
    """OCR evidence about the claim as numbers; None where the photo showed nothing to judge.

    - wordmark_exact / wordmark_near_miss: the claimed brand's wordmark read as spelt / only misspelt
      (a near miss beside an exact reading is OCR noise on a genuine package more often than a fake);
    - other_brand_wordmark: another brand's wordmark read (a look-alike, or a wrong claim);
    - serial_invalid: a serial that breaks the brand's format or check digit;
    - serial_unregistered: a well-formed serial absent from the brand's genuine registry;
    - serial_reuse_sellers: log1p of the other sellers that showed the same serial.
    """
    hits = list(ocr.get("wordmarks", []))
    serials = list(ocr.get("serials", []))
    own = [h for h in hits if brand is not None and h["brand"] == brand]
    values: dict[str, float | None] = dict.fromkeys(OCR_SIGNAL_NAMES)
    if hits:
        exact = any(h["match"] == "exact" for h in own)
        values["wordmark_exact"] = float(exact)
        values["wordmark_near_miss"] = float(not exact and any(h["match"] == "near_miss" for h in own))
        values["other_brand_wordmark"] = float(any(h["brand"] != brand for h in hits))
    if serials:
        values["serial_invalid"] = float(
            any(s["format_ok"] is False or s["checksum_ok"] is False for s in serials)
        )
        judged = [s for s in serials if s["registered"] is not None and s["format_ok"] is not False]
        if judged:
            values["serial_unregistered"] = float(not any(s["registered"] for s in judged))
        values["serial_reuse_sellers"] = math.log1p(max(int(s["seen_by_sellers"]) for s in serials))
    return values


def region_signals(
    index: ReferenceIndex, vectors: np.ndarray, *, brand_id: int, product_id: int | None
) -> tuple[dict[str, float | None], int]:
    """Embedding signals of the region that best matches the claim, and that region's position.

    The mark may fill 5% of a listing photo: each candidate region (the full photo first) is judged,
    and the one most similar to the claim's genuine references speaks for the photo.
    """
    per_region = [embedding_signals(index, v, brand_id=brand_id, product_id=product_id) for v in vectors]
    sims = [s["genuine_similarity"] if s["genuine_similarity"] is not None else -math.inf for s in per_region]
    best = int(np.argmax(sims)) if per_region else 0
    return per_region[best], best


def geometry_signals(
    query: LocalFeatures, references: list[LocalFeatures]
) -> tuple[dict[str, float | None], list[GeometryMatch]]:
    """Shape agreement with the claim's top references: the best one's inliers (log1p) and ratio."""
    found = [match_features(query, ref) for ref in references]
    if not found:
        return {"log_inliers": None, "inlier_ratio": None}, found
    best = max(found, key=lambda m: m.inliers)
    return {"log_inliers": math.log1p(best.inliers), "inlier_ratio": best.inlier_ratio}, found


GEOMETRY_REFERENCES = 3  # the claim's nearest genuine references checked for shape agreement


def claim_geometry(
    index: ReferenceIndex,
    vector: np.ndarray,
    query_features: Callable[[], LocalFeatures],
    reference_features: Callable[[int], LocalFeatures],
    *,
    brand_id: int,
    product_id: int | None,
    k: int = GEOMETRY_REFERENCES,
) -> tuple[dict[str, float | None], dict[int, GeometryMatch]]:
    """Geometry signals of a claim: the photo's local features against the claim's `k` genuine
    references nearest to `vector` (the region that spoke for it). Training and serving both call this.
    Features are fetched through the callables, only when the claim has references to check.
    Returns the signals and each checked reference id's match ({} and no signals when the claim has none)."""
    hits = index.search(np.asarray(vector, dtype=np.float32).reshape(1, -1), k, brand_id=brand_id,
                        product_id=product_id, kind="genuine")
    ref_ids = [int(i) for i in hits.ids[0] if i >= 0]
    if not ref_ids:
        return {}, {}
    values, found = geometry_signals(query_features(), [reference_features(i) for i in ref_ids])
    return values, dict(zip(ref_ids, found, strict=True))


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
    ocr: dict[str, Any] = dataclasses.field(default_factory=lambda: {"lines": [], "wordmarks": [], "serials": []})
    duplicates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"image": self.image} if self.image is not None else {}
        out.update(dataclasses.asdict(self))
        out["decision"] = self.decision.value
        if self.image is None:
            del out["image"]
        for match in out["matches"]:
            if match["box"] is not None:
                match["box"] = list(match["box"])
        return out
