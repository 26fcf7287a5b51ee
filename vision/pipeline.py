"""vision: pipeline — the one way a listing photo and its claim become a `ScoreResult`.

`Scorer.plan` (decode, OCR lines, detected marks, candidate regions) → `embed` (one forward pass for
many crops: injected, so a server can batch it across requests and training can run its local model)
→ `Scorer.judge` (index search, geometry, the mark verifier, known fakes, OCR evidence, signals, fusion,
decision).
The service, the CLI, scans, calibration, evaluation and every benchmark score through it.

What the pipeline needs from a catalog (a brand's policy and wordmarks, the serial registry, reuse
by other sellers, reference photos' local features, hashes and verifier maps, earlier listings of the same
photo)
comes through an `EvidenceSource`: look-ups only, no writes. Recording the listing is the caller's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch

from markguard.vision.artifact import ModelArtifact
from markguard.vision.decode import decode_image
from markguard.vision.detect import MarkDetector
from markguard.vision.evidence import (
    ClaimEvidence,
    OcrEvidence,
    SerialEvidence,
    SerialRecord,
)
from markguard.vision.geometry import (
    MAX_KEYPOINTS,
    GeometryMatch,
    LocalFeatures,
    extract_features,
    match_features,
)
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.ocr import OcrEngine, OcrLine
from markguard.vision.phash import hamming, phash
from markguard.vision.regions import Region, region_crops
from markguard.vision.scoring import (
    Claim,
    Fusion,
    Match,
    NamedScore,
    Policy,
    ScoreResult,
    claim_geometry,
    known_fake_evidence,
    known_fake_ids,
    region_evidence,
)
from markguard.vision.signals import compute_signals
from markguard.vision.text import SerialCandidate, match_wordmarks
from markguard.vision.verify import MarkVerifier, claim_mark

__all__ = ["Scorer", "ScoreRequest", "ScorePlan", "ListingClaim", "BrandProfile", "EvidenceSource", "OcrGate",
           "read_ocr_evidence", "judge_text", "judge_claim", "TOP_MATCHES", "STAGES", "WORDMARK_SIGNALS",
           "WORDMARK_OUTCOMES", "GEOMETRY_SIGNALS", "GEOMETRY_OUTCOMES"]

TOP_MATCHES = 5
_SEARCH_K = 20  # neighbours per region before merging
_RERANK = 5  # an unclaimed photo's nearest genuine references re-ranked by geometry
_OCR_CACHE = 256  # photos whose OCR lines are kept (keyed by content hash)

Embed = Callable[[Sequence[np.ndarray]], np.ndarray]

# Where a photo's CPU time goes (process CPU seconds, `Scorer.stage_cpu`); the scan's writer adds "record".
STAGES = ("decode", "detect", "regions", "embed", "search", "geometry", "verify", "ocr", "fusion")


class _Stage:
    """Adds the process CPU seconds of a `with` block to `into[name]` (and to the scorer's totals)."""

    __slots__ = ("into", "name", "total", "started")

    def __init__(self, into: dict[str, float], name: str, total: dict[str, float]) -> None:
        self.into, self.name, self.total = into, name, total

    def __enter__(self) -> None:
        self.started = time.process_time()

    def __exit__(self, *exc: object) -> None:
        spent = time.process_time() - self.started
        self.into[self.name] = self.into.get(self.name, 0.0) + spent
        self.total[self.name] = self.total.get(self.name, 0.0) + spent


# The wordmark signals (`vision.signals`) and what one OCR read of a brand's photo can set them to:
# (exact own, near-miss own, another brand's). "own": readings of the claimed brand's wordmark, spelt or
# misspelt; "all" adds another brand's wordmark read exactly, alone or beside one of those.
WORDMARK_SIGNALS = ("wordmark_exact", "wordmark_near_miss", "other_brand_wordmark")
WORDMARK_OUTCOMES = {"own": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
                     "all": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 1.0), (0.0, 1.0, 1.0))}
# The geometry signals and the corners of what a check against the claim's references can set them to:
# none checked, or inliers from 0 to every query keypoint (`extract_features`' cap) with a ratio from 0
# to 1. The fusion is linear in each signal's log-odds, so the corners bound every outcome.
GEOMETRY_SIGNALS = ("log_inliers", "inlier_ratio")
GEOMETRY_OUTCOMES = ((None, None), *((math.log1p(n), r) for n in (0, MAX_KEYPOINTS) for r in (0.0, 1.0)))


@dataclasses.dataclass(frozen=True)
class OcrGate:
    """When the gated path reads a photo's text: only where it can change the decision.

    The gated path plans a photo without OCR (regions from the mark detector and saliency), embeds and
    judges it, then (`action`):
    - "read" (today's whole-photo read, its evidence unchanged) when the judged brand has serial rules
      (serial evidence needs the photo's text wherever it is) or no brand is judged;
    - "skip" when no wordmark outcome in `outcomes` (`WORDMARK_OUTCOMES`) moves the risk across the
      brand's review or takedown threshold. The shifts come from the fusion in force (`fusion.json`'s
      weights and priors, read at run time), so the test follows any recalibration;
    - else "probe" (with `probe`; else "read"): a quick look for large text (`OcrEngine.probe`: the
      detector at `probe_scale`, a few boxes read). Only a probe that reads a wordmark (any brand's,
      spelt or misspelt) leads to the full read; otherwise the photo shows no wordmark OCR can read and
      its OCR evidence stays empty. With `approximate_probe` the probe's detector may run on an int8
      copy (EasyOCR's CRAFT on ONNX Runtime, about 3.3 times faster): it only decides whether to read,
      and what is read comes from the exact detector. On the 125 photos `bench scan` probed, it led to
      the same reads but one (an extra read, which only costs time).
    The same test skips geometry (`geometry`): where no geometry outcome (`GEOMETRY_OUTCOMES`), with no
    wordmark read or any wordmark outcome, moves the risk across a threshold, the photo's shape is not
    checked (its geometry signals stay empty; the OCR test then skips too). `regions`: at most this many
    regions are embedded before the gate (0: the model's `max_regions`): the full photo, the detected
    marks, then the best-scored crops; a photo read in full is judged again on the full path's regions.
    On 100 bench photos, 3 regions instead of 6 kept 98% of decisions equal to reading every photo on 6
    (as 6 did) and cut embedding by 40%.
    What is skipped against reading every photo is measured in `bench scan` (decision agreement).
    """

    outcomes: str = "own"
    probe: bool = True
    probe_scale: float = 0.6
    approximate_probe: bool = True
    geometry: bool = True
    regions: int = 3

    def __post_init__(self) -> None:
        if self.outcomes not in WORDMARK_OUTCOMES:
            raise ValueError(f"outcomes: one of {', '.join(WORDMARK_OUTCOMES)}")

    def action(self, brand: BrandProfile | None, values: Mapping[str, float | None], fusion: Fusion,
               policy: Policy) -> str:
        if brand is None or _checks_serials(brand):
            return "read"
        now = policy.decide(fusion.risk(values)[0])
        for outcome in WORDMARK_OUTCOMES[self.outcomes]:
            if policy.decide(fusion.risk({**values, **dict(zip(WORDMARK_SIGNALS, outcome, strict=True))})[0]) != now:
                return "probe" if self.probe else "read"
        return "skip"

    def needs_geometry(self, brand: BrandProfile | None, values: Mapping[str, float | None], fusion: Fusion,
                       policy: Policy) -> bool:
        """False when no geometry outcome, with or without any wordmark outcome, changes the decision."""
        if not self.geometry or brand is None or _checks_serials(brand):
            return True
        words = [dict.fromkeys(WORDMARK_SIGNALS)] + [dict(zip(WORDMARK_SIGNALS, o, strict=True))
                                                     for o in WORDMARK_OUTCOMES[self.outcomes]]
        decisions = {policy.decide(fusion.risk({**values, **dict(zip(GEOMETRY_SIGNALS, g, strict=True)), **w})[0])
                     for g in GEOMETRY_OUTCOMES for w in words}
        return len(decisions) > 1


def _checks_serials(brand: BrandProfile) -> bool:
    """Whether the brand has serial rules (a pattern or a check digit): its photos are always read in full."""
    return bool(brand.serial_pattern) or brand.serial_checksum not in (None, "none")


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

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclasses.dataclass(frozen=True)
class ListingClaim(Claim):
    """What a listing claims, with its title: `claimed` {`brand`, `product`, `title`} in the score JSON."""

    title: str | None = None


@dataclasses.dataclass(frozen=True)
class BrandProfile:
    """A brand as scoring needs it: its id in the index, wordmarks, serial rules and policy."""

    id: int
    name: str
    wordmarks: tuple[str, ...] = ()
    serial_pattern: str | None = None
    serial_checksum: str | None = None
    review_at: float | None = None
    takedown_at: float | None = None


class EvidenceSource(Protocol):
    """The catalog's side of scoring: look-ups only. Serving's is `serving.engine.CatalogEvidence`."""

    def resolve(self, brand: str | None, product: str | None) -> tuple[BrandProfile | None, int | None]:
        """The claimed brand and product id; an unknown one raises `NotFound`."""

    def brand(self, brand_id: int) -> BrandProfile: ...

    def wordmarks(self) -> Mapping[str, Sequence[str]]:
        """Every brand's wordmarks (a brand's name when it registered none)."""

    def serials(self, brand: BrandProfile | None, normalized: Sequence[str], *, seller: str | None,
                listing: str | None) -> list[SerialRecord]: ...

    def product_name(self, product_id: int) -> str | None: ...

    def reference_features(self, reference_id: int) -> LocalFeatures | None:
        """The reference's local features; None when it left the catalog after the index was read."""

    def reference_hash(self, reference_id: int) -> int | None:
        """The perceptual hash of a reference's photo (None: unknown)."""

    def reference_mark(self, reference_id: int) -> torch.Tensor | None:
        """The reference's map as the model's mark verifier reads it (`MarkVerifier.reference_map`); None
        when its photo is gone or it is not a crop of its mark. Asked only by a scorer whose model has a
        verifier."""

    def reference_names(self, reference_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """(brand, product or None) of each reference id."""

    def duplicates(self, photo_hash: int, *, listing: str | None) -> tuple[list[dict[str, Any]], int]:
        """(the newest earlier listings that showed the same photo, or a near copy, under another listing
        id, at most a capped number; how many there are in all)."""

    def shared_known_fakes(self, brand: BrandProfile) -> Sequence[int]:
        """Reference ids of the known fakes other brands share with the alliance (evidence for `brand` too)."""


@dataclasses.dataclass
class ScorePlan:
    """A photo ready to embed: decoded, read, cut into candidate regions."""

    request: ScoreRequest
    brand: BrandProfile | None
    product_id: int | None
    image: np.ndarray
    regions: list[Region]
    crops: list[np.ndarray]
    started: float
    photo_hash: int
    ocr_lines: list[OcrLine] | None = None  # None: OCR is off (or deferred to `judge` by the gate)
    ocr_seconds: float = 0.0  # time spent reading this photo's text (0 when OCR is off or cached)
    features: LocalFeatures | None = None  # the photo's local features, extracted when first needed
    ocr_deferred: bool = False  # the gate decides in `judge` whether this photo's text is read
    ocr_probed: bool = False  # the gate looked for a wordmark first (`OcrGate`, "probe")
    mark_boxes: list[tuple[int, int, int, int]] = dataclasses.field(default_factory=list)  # the detector's
    mark_map: torch.Tensor | None = None  # the photo's mark as the verifier reads it, computed when first needed
    cpu: dict[str, float] = dataclasses.field(default_factory=dict)  # process CPU seconds by stage (STAGES)

    def query_features(self) -> LocalFeatures:
        if self.features is None:
            self.features = extract_features(self.image)
        return self.features

    def query_mark(self, verifier: MarkVerifier) -> torch.Tensor:
        if self.mark_map is None:
            self.mark_map = verifier.query_map(self.image, self.mark_boxes)
        return self.mark_map


def read_ocr_evidence(ocr: OcrEngine, image: np.ndarray, lines: Sequence[OcrLine], *, brand: BrandProfile | None,
                      source: EvidenceSource, seller: str | None = None, listing: str | None = None) -> OcrEvidence:
    """Wordmarks and serials of a photo whose lines are read: serials are read by the brand's pattern
    and checksum (re-reading their boxes where that helps), then judged by `judge_text`."""
    candidates = ocr.read_serials(image, lines, pattern=brand.serial_pattern if brand else None,
                                  checksum=(brand.serial_checksum if brand else None) or "none")
    return judge_text(lines, candidates, brand=brand, source=source, seller=seller, listing=listing)


def judge_text(lines: Sequence[OcrLine], candidates: Sequence[SerialCandidate], *, brand: BrandProfile | None,
               source: EvidenceSource, seller: str | None = None, listing: str | None = None) -> OcrEvidence:
    """OCR evidence from lines and serial candidates: every brand's wordmarks (the claimed one's near
    misses too) and each serial with the catalog's record of it (registry, reuse by other sellers)."""
    hits = match_wordmarks([line.text for line in lines], brand=brand.name if brand else None,
                           wordmarks={b: list(w) for b, w in source.wordmarks().items()})
    records = source.serials(brand, [c.normalized for c in candidates], seller=seller, listing=listing)
    return OcrEvidence(lines=tuple(lines), wordmarks=tuple(hits),
                       serials=tuple(SerialEvidence.of(c, r) for c, r in zip(candidates, records, strict=True)))


def judge_claim(index: ReferenceIndex, vectors: np.ndarray, *, brand: str, brand_id: int, product_id: int | None,
                query_features: Callable[[], LocalFeatures] | None,
                reference_features: Callable[[int], LocalFeatures | None], photo_hash: int | None,
                reference_hash: Callable[[int], int | None], shared: Sequence[int] = (),
                stage: Callable[[str], AbstractContextManager[Any]] = lambda name: nullcontext(),
                needs_geometry: Callable[[ClaimEvidence], bool] | None = None,
                verifier: MarkVerifier | None = None, query_mark: Callable[[], torch.Tensor] | None = None,
                reference_mark: Callable[[int], torch.Tensor | None] | None = None,
                ) -> tuple[ClaimEvidence, dict[int, GeometryMatch]]:
    """The evidence of one claim from its photo's region vectors (one row per crop), as `Scorer.judge`
    gathers it and calibration (`training.evaluation.make_claims`) fits it: the region most similar to
    the claim, shape agreement with the claim's nearest genuine references (skipped when
    `query_features` is None), the photo's mark against those references by the `verifier` (skipped
    without one, or without `query_mark`), and the nearest known fake with the photo's hash distance to it.
    `needs_geometry(evidence)` (the embedding and known-fake evidence gathered): False skips geometry.
    Returns the evidence and each geometry-checked reference's match. `stage(name)` times each step."""
    evidence = ClaimEvidence(brand=brand)
    by_reference: dict[int, GeometryMatch] = {}
    with stage("search"):
        evidence.embedding = region_evidence(index, vectors, brand_id=brand_id, product_id=product_id)
    with stage("search"):
        found = known_fake_evidence(index, vectors, brand_id=brand_id, product_id=product_id, shared=shared)
        if found is not None and found.reference_id is not None and photo_hash is not None:
            # the photo's hash against the known fakes nearest to any region
            hits = index.search(vectors, _RERANK, allowed_ids=known_fake_ids(index, brand_id=brand_id, shared=shared))
            hashes = [reference_hash(i) for i in sorted({int(i) for i in hits.ids.ravel() if i >= 0})]
            distances = [hamming(photo_hash, h) for h in hashes if h is not None]
            found = dataclasses.replace(found, copy_distance=min(distances) if distances else None)
        evidence.known_fake = found
    if verifier is not None and query_mark is not None and reference_mark is not None:
        region = evidence.embedding.region
        with stage("verify"):
            evidence.mark = claim_mark(index, vectors[region : region + 1], verifier, brand_id=brand_id,
                                       product_id=product_id, query_map=query_mark, reference_map=reference_mark)
    if query_features is not None:
        with stage("fusion"):
            wanted = needs_geometry is None or needs_geometry(evidence)
        if wanted:
            region = evidence.embedding.region
            with stage("geometry"):
                evidence.geometry, by_reference = claim_geometry(index, vectors[region : region + 1], query_features,
                                                                 reference_features, brand_id=brand_id,
                                                                 product_id=product_id)
    return evidence, by_reference


class Scorer:
    """Scores photos against one model artifact, one reference index and one evidence source.

    `index` may be swapped between calls (a newer version saved by another process); `ocr=None`
    skips reading text; with `ocr_gate`, text is read only where the gate says it can matter (see
    `OcrGate`), else on every photo. `on_ocr_seconds` is called with the seconds of every fresh OCR
    read. `stage_cpu` sums the process CPU seconds of every photo scored, by stage. `verifier` is the
    model's mark verifier (`ModelArtifact.load_verifier`; without it `mark_mismatch` stays None), whose
    reference maps come from the source's `reference_mark`."""

    def __init__(self, artifact: ModelArtifact, *, index: ReferenceIndex, source: EvidenceSource, embed: Embed,
                 detector: MarkDetector | None = None, verifier: MarkVerifier | None = None,
                 ocr: OcrEngine | None = None, ocr_budget_ms: float = 3000.0,
                 on_ocr_seconds: Callable[[float], None] | None = None, ocr_gate: OcrGate | None = None) -> None:
        self.artifact = artifact
        self.index = index
        self.source = source
        self.embed = embed
        self.detector = detector
        self.verifier = verifier
        self.fusion = Fusion(artifact.fusion)
        self.ocr = ocr
        self.ocr_budget_ms = ocr_budget_ms
        self.on_ocr_seconds = on_ocr_seconds
        self.ocr_gate = ocr_gate
        self.stage_cpu: dict[str, float] = {}
        self.ocr_runs = [0, 0, 0]  # photos whose text was read, photos scored, photos probed (the gate's shares)
        self.max_regions = artifact.max_regions
        self._ocr_cache: OrderedDict[str, list[OcrLine]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def model_tag(self) -> str:
        return self.artifact.tag

    # -- the three steps ---------------------------------------------------------------------------
    def plan(self, request: ScoreRequest) -> ScorePlan:
        """Resolve the claim (unknown brand or product: NotFound), decode, read, propose regions, crop."""
        started = time.perf_counter()
        cpu: dict[str, float] = {}
        with _Stage(cpu, "decode", self.stage_cpu):
            brand, product_id = self.source.resolve(request.brand, request.product)
            image = decode_image(request.data)
        deferred = self.ocr is not None and self.ocr_gate is not None
        with _Stage(cpu, "ocr", self.stage_cpu):
            lines, ocr_seconds = self._read_text(request, image) if self.ocr is not None and not deferred \
                else (None, 0.0)
        text_boxes = [line.box for line in lines or []]
        with _Stage(cpu, "detect", self.stage_cpu):
            mark_boxes = [d.box for d in self.detector.detect([image])[0]] if self.detector is not None else []
        cap = self.max_regions
        if deferred and self.ocr_gate.regions > 0:
            cap = min(cap, self.ocr_gate.regions)
        with _Stage(cpu, "regions", self.stage_cpu):
            regions, crops = region_crops(image, max_regions=cap, mark_boxes=mark_boxes, text_boxes=text_boxes)
            photo_hash = phash(image).int64
        return ScorePlan(request, brand, product_id, image, regions, crops, started, photo_hash,
                         ocr_lines=lines, ocr_seconds=ocr_seconds, ocr_deferred=deferred, cpu=cpu,
                         mark_boxes=mark_boxes)

    def judge(self, plan: ScorePlan, vectors: np.ndarray) -> ScoreResult:
        """The result for a planned photo from its regions' vectors (one row per crop)."""
        request, index, cpu = plan.request, self.index, plan.cpu
        brand, product_id = plan.brand, plan.product_id
        if brand is None:  # no claim: judge the photo against the best-matching genuine reference
            with _Stage(cpu, "geometry", self.stage_cpu):
                best = self._verified_best(plan, vectors)
            if best is not None:
                brand_id, product_id, _ = index.metadata(best)
                brand, product_id = self.source.brand(brand_id), (product_id if product_id >= 0 else None)
        shared = self.source.shared_known_fakes(brand) if brand is not None else ()
        evidence, by_reference, brand_best = ClaimEvidence(brand=None), {}, None
        if brand is not None:
            evidence, by_reference = judge_claim(
                index, vectors, brand=brand.name, brand_id=brand.id, product_id=product_id,
                query_features=plan.query_features, reference_features=self.source.reference_features,
                photo_hash=plan.photo_hash, reference_hash=self.source.reference_hash, shared=shared,
                stage=lambda name: _Stage(cpu, name, self.stage_cpu), needs_geometry=self._geometry_gate(plan, brand),
                verifier=self.verifier, query_mark=lambda: plan.query_mark(self.verifier),
                reference_mark=self.source.reference_mark if self.verifier is not None else None)
            with _Stage(cpu, "search", self.stage_cpu):
                brand_best = self._nearest(vectors, brand_id=brand.id, kind="genuine")
        if plan.ocr_deferred and self.ocr is not None and self.ocr_gate is not None and \
                self._gated_read(plan, evidence, brand):
            # read in full: judged again as the full path judges it, its text boxes among the regions
            with _Stage(cpu, "regions", self.stage_cpu):
                regions, crops = region_crops(plan.image, max_regions=self.max_regions, mark_boxes=plan.mark_boxes,
                                              text_boxes=[line.box for line in plan.ocr_lines or []])
            if [r.box for r in regions] != [r.box for r in plan.regions]:
                again = dataclasses.replace(plan, regions=regions, crops=crops, ocr_deferred=False)
                with _Stage(cpu, "embed", self.stage_cpu):
                    vectors = self.embed(crops)
                return self.judge(again, vectors)
        if plan.ocr_lines is not None:
            with _Stage(cpu, "ocr", self.stage_cpu):
                evidence.ocr = read_ocr_evidence(self.ocr, plan.image, plan.ocr_lines, brand=brand,
                                                 source=self.source, seller=request.seller, listing=request.listing)
        with self._lock:
            self.ocr_runs[0] += plan.ocr_lines is not None
            self.ocr_runs[1] += 1
            self.ocr_runs[2] += plan.ocr_probed
        with _Stage(cpu, "fusion", self.stage_cpu):
            return self._result(plan, vectors, evidence, brand=brand, product_id=product_id, brand_best=brand_best,
                                shared=shared, by_reference=by_reference)

    def _result(self, plan: ScorePlan, vectors: np.ndarray, evidence: ClaimEvidence, *, brand: BrandProfile | None,
                product_id: int | None, brand_best: tuple[float, int] | None, shared: Sequence[int],
                by_reference: dict[int, Any]) -> ScoreResult:
        request, index = plan.request, self.index
        product_score = evidence.embedding.genuine_similarity if evidence.embedding and product_id is not None else None
        if brand is not None and product_id is None and brand_best is not None:  # name the brand's best product
            best_product = index.metadata(brand_best[1])[1]
            if best_product >= 0:
                product_id, product_score = best_product, brand_best[0]
        risk, signals = self.fusion.risk(compute_signals(evidence))
        duplicates, duplicates_total = self.source.duplicates(plan.photo_hash, listing=request.listing)
        claimed = (Claim(brand=request.brand, product=request.product) if request.title is None else
                   ListingClaim(brand=request.brand, product=request.product, title=request.title))
        return ScoreResult(
            risk=round(risk, 4),
            decision=self._policy(brand).decide(risk),
            brand=NamedScore(name=brand.name if brand else None, score=_round(brand_best[0] if brand_best else None)),
            product=NamedScore(name=self._product_name(product_id, brand), score=_round(product_score)),
            claimed=claimed,
            matches=self._matches(plan, vectors, brand=brand, shared=shared, inliers=by_reference),
            signals=signals,
            model=self.model_tag,
            provisional=self.fusion.provisional,
            duplicates=duplicates,
            duplicates_total=duplicates_total,
            ocr=evidence.ocr or OcrEvidence(),
            image=request.label,
            brand_id=brand.id if brand else None,
            elapsed_ms=round((time.perf_counter() - plan.started) * 1000, 2),
        )

    def embed_plans(self, plans: Sequence[ScorePlan]) -> list[np.ndarray]:
        """Every region of every plan in one forward pass; one (regions, d) block per plan (its CPU time
        shared out by crops)."""
        started = time.process_time()
        vectors = self.embed([c for p in plans for c in p.crops])
        spent, crops = time.process_time() - started, sum(len(p.crops) for p in plans)
        for p in plans:
            p.cpu["embed"] = p.cpu.get("embed", 0.0) + spent * len(p.crops) / max(1, crops)
        self.stage_cpu["embed"] = self.stage_cpu.get("embed", 0.0) + spent
        return np.split(vectors, np.cumsum([len(p.crops) for p in plans])[:-1]) if plans else []

    def score_many(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score photos together: one batched forward pass for every region of every photo."""
        plans = [self.plan(r) for r in requests]
        return [self.judge(p, v) for p, v in zip(plans, self.embed_plans(plans), strict=True)]

    # -- internals ---------------------------------------------------------------------------------
    def _geometry_gate(self, plan: ScorePlan, brand: BrandProfile) -> Callable[[ClaimEvidence], bool] | None:
        """The gate's geometry test for a deferred photo (`OcrGate.needs_geometry`); None: always checked."""
        gate = self.ocr_gate
        if not plan.ocr_deferred or self.ocr is None or gate is None or not gate.geometry:
            return None
        policy = self._policy(brand)
        return lambda evidence: gate.needs_geometry(brand, compute_signals(evidence), self.fusion, policy)

    def _gated_read(self, plan: ScorePlan, evidence: ClaimEvidence, brand: BrandProfile | None) -> bool:
        """Read the photo's text where the gate says it can matter (`OcrGate.action`); True: read in full."""
        cpu = plan.cpu
        with _Stage(cpu, "fusion", self.stage_cpu):
            action = self.ocr_gate.action(brand, compute_signals(evidence), self.fusion, self._policy(brand))
        if action == "skip":
            return False
        with _Stage(cpu, "ocr", self.stage_cpu):
            if action == "probe":
                plan.ocr_probed = True
                seen = self.ocr.probe(plan.image, scale=self.ocr_gate.probe_scale,
                                      approximate=self.ocr_gate.approximate_probe)
                hits = match_wordmarks([line.text for line in seen], brand=brand.name if brand else None,
                                       wordmarks={b: list(w) for b, w in self.source.wordmarks().items()})
                if not hits:
                    return False
            plan.ocr_lines, plan.ocr_seconds = self._read_text(plan.request, plan.image)
        return True

    def _read_text(self, request: ScoreRequest, image: np.ndarray) -> tuple[list[OcrLine], float]:
        """(OCR lines, seconds spent reading); the same photo scored again (another claim, a retry) is
        read once, and its cached lines cost 0 seconds."""
        key = request.sha256
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

    def _matches(self, plan: ScorePlan, vectors: np.ndarray, *, brand: BrandProfile | None, shared: Sequence[int],
                 inliers: Mapping[int, Any]) -> list[Match]:
        """Top references over all regions, each with the region that matched it best: genuine
        references of any brand, and the known fakes the judged brand is judged against (its own, and
        those shared with the alliance, named with the brand that shared them). Another brand's private
        known fakes never surface: they are its own evidence, and a wrongly labelled one must not appear
        under other brands' listings."""
        fakes = set(known_fake_ids(self.index, brand_id=brand.id, shared=shared).tolist()) if brand is not None else set()
        hits = self.index.search(vectors, _SEARCH_K)
        best: dict[int, tuple[float, int]] = {}
        for region, (sims, ids) in enumerate(zip(hits.similarities, hits.ids, strict=True)):
            for sim, ref_id in zip(sims, ids, strict=True):
                if ref_id >= 0 and float(sim) > best.get(int(ref_id), (-np.inf, 0))[0]:
                    best[int(ref_id)] = (float(sim), region)
        shown = [i for i in sorted(best, key=lambda i: -best[i][0])
                 if self.index.metadata(i)[2] == KIND_CODES["genuine"] or i in fakes]
        # a reference deleted since the index was read has a vector but no name: it is not shown
        names = self.source.reference_names(shown)
        kept = [i for i in shown if i in names][:TOP_MATCHES]
        out = []
        for ref_id in kept:
            sim, region = best[ref_id]
            kind = self.index.metadata(ref_id)[2]
            out.append(Match(reference_id=ref_id, brand=names[ref_id][0], product=names[ref_id][1],
                             kind="genuine" if kind == KIND_CODES["genuine"] else "counterfeit",
                             similarity=round(sim, 4),
                             inliers=inliers[ref_id].inliers if ref_id in inliers else None,
                             box=tuple(int(v) for v in plan.regions[region].box)))
        return out

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
        query = plan.query_features()
        features = {i: self.source.reference_features(i) for i in candidates}
        inliers = {i: match_features(query, f).inliers for i, f in features.items() if f is not None}
        if not inliers:  # every candidate left the catalog since the index was read
            return None
        return max(inliers, key=lambda i: (inliers[i], best_sim[i]))

    def _nearest(self, vectors: np.ndarray, **filters: Any) -> tuple[float, int] | None:
        """(similarity, reference id) of the nearest reference to any region, among those filtered."""
        hits = self.index.search(vectors, 1, **filters)
        if not (hits.ids[:, 0] >= 0).any():
            return None
        best = int(np.argmax(np.where(hits.ids[:, 0] >= 0, hits.similarities[:, 0], -np.inf)))
        return float(hits.similarities[best, 0]), int(hits.ids[best, 0])

    def _product_name(self, product_id: int | None, brand: BrandProfile | None) -> str | None:
        return self.source.product_name(product_id) if product_id is not None and brand is not None else None

    def _policy(self, brand: BrandProfile | None) -> Policy:
        default = self.fusion.policy
        if brand is None:
            return default
        return Policy(review_at=brand.review_at if brand.review_at is not None else default.review_at,
                      takedown_at=brand.takedown_at if brand.takedown_at is not None else default.takedown_at)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
