"""Evaluating an embedder on an eval set: retrieval, claim verification, per brand, per counterfeit
transform and strength. Claims are judged by the pipeline's own judging step
(`vision.pipeline.judge_claim`: embedding, geometry, the mark verifier, known fakes and copies of them)
against an in-memory `ReferenceIndex`, and their signals are the registry's (`vision.signals.compute_signals`),
the very ones serving computes, so calibration has no train/serve skew.

A query is one vector (its full photo) or, as serving sees it, a block of region vectors — the full
photo first, then the crops `vision.regions.propose_regions` finds — of which the region most similar
to the claim speaks for the photo. Geometry, mark and known-fake copy evidence come from the photos'
local features, verifier maps and hashes (`PhotoEvidence`); OCR evidence is added by
`training.ocr_evidence.add_ocr`.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from markguard.training.data import EvalSet, Item, load_image
from markguard.training.metrics import RocInput, map_at_r, recall_at_k, roc_auc, tpr_at_fpr
from markguard.vision.detect import MarkDetector
from markguard.vision.evidence import ClaimEvidence
from markguard.vision.geometry import LocalFeatures
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.pipeline import judge_claim
from markguard.vision.regions import iou, propose_regions, region_crops
from markguard.vision.scoring import Fusion
from markguard.vision.signals import compute_signals
from markguard.vision.verify import MarkVerifier

__all__ = ["ClaimSet", "QueryVectors", "as_regions", "query_region_crops", "split_blocks", "build_index", "make_claims",
           "PhotoEvidence", "mark_maps", "evaluate_embeddings", "bootstrap_intervals", "proposal_coverage",
           "STRENGTH_BINS"]

QueryVectors = np.ndarray | Sequence[np.ndarray]  # (Q, d) full photos, or per query (regions, d), full photo first

STRENGTH_BINS = ((0.0, 0.5), (0.5, 0.75), (0.75, 1.0001))


@dataclasses.dataclass
class ClaimSet:
    """One row per (query photo, claimed brand/product): its signals and whether it is genuine."""

    query: np.ndarray  # index into the eval set's queries
    kind: list[str]  # true | same_brand | other_brand | counterfeit
    not_genuine: np.ndarray
    evidence: list[ClaimEvidence]
    values: list[dict[str, float | None]]  # the signals of `evidence` (`refresh` after changing it)
    brand: list[str]  # the claimed brand
    brand_id: np.ndarray  # the claim, in `index`'s ids
    product_id: list[int | None]
    region: np.ndarray  # the query region that spoke for the claim
    index: ReferenceIndex

    def refresh(self, claim: int) -> None:
        """Recompute one claim's signals from its evidence."""
        self.values[claim] = compute_signals(self.evidence[claim])


def as_regions(query_vectors: QueryVectors) -> list[np.ndarray]:
    """Per query, its (regions, d) block; a (Q, d) array is one region (the full photo) per query."""
    if isinstance(query_vectors, np.ndarray):
        if query_vectors.ndim != 2:
            raise ValueError(f"query vectors must be (Q, d), got shape {query_vectors.shape}")
        return [query_vectors[q : q + 1] for q in range(len(query_vectors))]
    blocks = [np.asarray(b, dtype=np.float32).reshape(-1, np.shape(b)[-1]) for b in query_vectors]
    if any(len(b) == 0 for b in blocks):
        raise ValueError("every query needs at least its full-photo vector")
    return blocks


class _Ids:
    def __init__(self, items: Sequence[Item]) -> None:
        self.brands = {b: i for i, b in enumerate(sorted({it.brand for it in items}))}
        pairs = sorted({(it.brand, it.product) for it in items if it.product is not None})
        self.products = {p: i for i, p in enumerate(pairs)}

    def product(self, brand: str, product: str | None) -> int | None:
        return None if product is None else self.products.get((brand, product), -2)


def build_index(refs: Sequence[Item], vectors: np.ndarray, ids: _Ids) -> ReferenceIndex:
    index = ReferenceIndex(vectors.shape[1])
    index.add(
        np.arange(len(refs)),
        vectors,
        brand_ids=np.array([ids.brands[r.brand] for r in refs]),
        product_ids=np.array([-1 if r.product is None else ids.products[(r.brand, r.product)] for r in refs]),
        kinds=np.array([KIND_CODES["genuine" if r.genuine else "counterfeit"] for r in refs]),
    )
    return index


@dataclasses.dataclass(frozen=True)
class PhotoEvidence:
    """What a claim's photo evidence needs beyond vectors, per eval-set photo: local features (geometry),
    perceptual hashes (copies of known fakes) and the model's mark verifier with its maps of every photo
    (`mark_maps`). A missing part is evidence not gathered."""

    query_features: Sequence[LocalFeatures] | None = None
    reference_features: Sequence[LocalFeatures] | None = None
    query_hashes: Sequence[int] | None = None
    reference_hashes: Sequence[int] | None = None
    verifier: MarkVerifier | None = None
    query_marks: Sequence[torch.Tensor] | None = None
    reference_marks: Sequence[torch.Tensor | None] | None = None  # None: a reference the verifier does not compare


def make_claims(eval_set: EvalSet, ref_vectors: np.ndarray, query_vectors: QueryVectors, *, seed: int = 0,
                photos: PhotoEvidence = PhotoEvidence()) -> ClaimSet:
    """Each genuine photo claims its own product (genuine), another product of its brand and another
    brand (not genuine); each counterfeit photo claims the brand it imitates (not genuine). Every claim
    is judged by the pipeline's `judge_claim`, as serving judges it."""
    regions = as_regions(query_vectors)
    ids = _Ids([*eval_set.references, *eval_set.queries])
    index = build_index(eval_set.references, ref_vectors, ids)
    rng = np.random.default_rng(seed)
    ref_classes = sorted({(r.brand, r.product) for r in eval_set.references if r.genuine}, key=str)
    claims: list[tuple[int, str, str, str | None]] = []
    for q, item in enumerate(eval_set.queries):
        if not item.genuine:
            claims.append((q, "counterfeit", item.brand, item.product))
            continue
        claims.append((q, "true", item.brand, item.product))
        same = [c for c in ref_classes if c[0] == item.brand and c[1] != item.product]
        if same:
            claims.append((q, "same_brand", *same[int(rng.integers(len(same)))]))
        other = [c for c in ref_classes if c[0] != item.brand]
        if other:
            claims.append((q, "other_brand", *other[int(rng.integers(len(other)))]))
    evidence, brand_ids, product_ids = [], [], []
    reference_features = photos.reference_features.__getitem__ if photos.reference_features is not None else None
    reference_hash = photos.reference_hashes.__getitem__ if photos.reference_hashes is not None else (lambda i: None)
    marks = photos.verifier is not None and photos.query_marks is not None and photos.reference_marks is not None
    for q, _, brand, product in claims:
        brand_id, product_id = ids.brands.get(brand, -2), ids.product(brand, product)
        found, _ = judge_claim(
            index, regions[q], brand=brand, brand_id=brand_id, product_id=product_id,
            query_features=(lambda q=q: photos.query_features[q]) if photos.query_features is not None else None,
            reference_features=reference_features, reference_hash=reference_hash,
            photo_hash=photos.query_hashes[q] if photos.query_hashes is not None else None,
            verifier=photos.verifier if marks else None,
            query_mark=(lambda q=q: photos.query_marks[q]) if marks else None,
            reference_mark=photos.reference_marks.__getitem__ if marks else None)
        evidence.append(found)
        brand_ids.append(brand_id)
        product_ids.append(product_id)
    return ClaimSet(
        query=np.array([c[0] for c in claims], dtype=np.int64),
        kind=[c[1] for c in claims],
        not_genuine=np.array([c[1] != "true" for c in claims], dtype=bool),
        evidence=evidence,
        values=[compute_signals(e) for e in evidence],
        brand=[c[2] for c in claims],
        brand_id=np.array(brand_ids, dtype=np.int64),
        product_id=product_ids,
        region=np.array([e.embedding.region for e in evidence], dtype=np.int64),
        index=index,
    )


def query_region_crops(images: Sequence[np.ndarray], *, max_regions: int,
                       detector: MarkDetector | None = None) -> tuple[list[np.ndarray], list[int]]:
    """Every query photo's region crops as serving proposes them (full photo first, then the marks the
    model's detector finds, when it has one), stacked, and how many each photo has (`split_blocks`
    turns their vectors back into per-query blocks)."""
    marks = _detected_marks(images, detector)
    crops: list[np.ndarray] = []
    counts = []
    for image, found_marks in zip(images, marks, strict=True):
        _, found = region_crops(image, max_regions=max_regions, mark_boxes=found_marks)
        crops += found
        counts.append(len(found))
    return crops, counts


def mark_maps(eval_set: EvalSet, verifier: MarkVerifier, detector: MarkDetector | None, *,
              progress: bool = False) -> tuple[list[torch.Tensor | None], list[torch.Tensor]]:
    """The verifier's map of every reference (its photo whole; None where it is not a crop of its mark) and
    of every query's mark (the detector's best box), as serving reads them (`MarkVerifier.reference_map`,
    `ScorePlan.query_mark`)."""
    references = [verifier.reference_map(load_image(r)[0], detector)
                  for r in tqdm(eval_set.references, desc=f"verifier: {eval_set.name} references", leave=False,
                                disable=not progress)]
    queries = []
    for item in tqdm(eval_set.queries, desc=f"verifier: {eval_set.name} queries", leave=False, disable=not progress):
        image = load_image(item)[0]
        queries.append(verifier.query_map(image, _detected_marks([image], detector)[0]))
    return references, queries


def proposal_coverage(images: Sequence[np.ndarray], marks: Sequence[tuple[int, int, int, int] | None], *,
                      max_regions: int, detector: MarkDetector | None = None,
                      min_iou: float = 0.5) -> dict[str, float] | None:
    """How often the region proposals find the mark: for each photo with a `mark` box, the best IoU of
    its regions (as serving proposes them, with the detector's marks and without OCR text boxes) with
    that box. Returns the share of photos at or above `min_iou`, the mean best IoU and the photo count;
    None when no photo has a box."""
    pairs = [(image, box) for image, box in zip(images, marks, strict=True) if box is not None]
    if not pairs:
        return None
    detected = _detected_marks([image for image, _ in pairs], detector)
    best = [max(iou(r.box, box) for r in propose_regions(image, max_regions=max_regions, mark_boxes=found))
            for (image, box), found in zip(pairs, detected, strict=True)]
    return {"share_found": float(np.mean(np.array(best) >= min_iou)), "mean_best_iou": float(np.mean(best)),
            "min_iou": min_iou, "photos": len(best)}


def _detected_marks(images: Sequence[np.ndarray], detector: MarkDetector | None) -> list[list[tuple[int, int, int, int]]]:
    if detector is None:
        return [[] for _ in images]
    return [[d.box for d in found] for found in detector.detect(images)]


def split_blocks(vectors: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
    """Stacked region vectors split into one (regions, d) block per query."""
    return np.split(vectors, np.cumsum(counts)[:-1]) if len(counts) else []


def _similarity_scores(claims: ClaimSet) -> np.ndarray:
    return np.array([-np.inf if v["genuine_similarity"] is None else v["genuine_similarity"] for v in claims.values])


def _auc_block(scores: np.ndarray, kinds: np.ndarray, negative_kind: str) -> dict[str, float] | None:
    mask = (kinds == "true") | (kinds == negative_kind)
    if not (kinds == negative_kind).any() or not (kinds == "true").any():
        return None
    pos = kinds[mask] == "true"
    s = scores[mask]
    return {"auc": roc_auc(s, pos), "tpr_at_fpr_1pct": tpr_at_fpr(s, pos, 0.01),
            "tpr_at_fpr_5pct": tpr_at_fpr(s, pos, 0.05), "pairs": int(mask.sum())}


def evaluate_embeddings(
    eval_set: EvalSet, ref_vectors: np.ndarray, query_vectors: QueryVectors, *, fusion: Fusion | None = None,
    seed: int = 0, claims: ClaimSet | None = None,
) -> dict[str, Any]:
    """All metrics of one embedder on one eval set (JSON-ready), plus `_roc` curves for plotting.

    Retrieval ranks references by their best similarity over the query's regions; MAP@R compares the
    full-photo vectors of the queries among themselves."""
    refs, queries = eval_set.references, eval_set.queries
    regions = as_regions(query_vectors)
    out: dict[str, Any] = {"references": len(refs), "queries": len(queries),
                           "regions_per_query": float(np.mean([len(b) for b in regions])) if regions else 0.0}
    # retrieval: genuine queries against genuine references, label = (brand, product)
    g_ref = [i for i, r in enumerate(refs) if r.genuine]
    g_q = [i for i, q in enumerate(queries) if q.genuine]
    ref_labels = np.array([f"{refs[i].brand}\x1f{refs[i].product}" for i in g_ref])
    q_labels = np.array([f"{queries[i].brand}\x1f{queries[i].product}" for i in g_q])
    genuine_refs = ref_vectors[g_ref]
    sim = np.stack([(regions[i] @ genuine_refs.T).max(axis=0) for i in g_q]) if g_q else np.zeros((0, len(g_ref)))
    out["recall_at_1"] = recall_at_k(sim, q_labels, ref_labels, 1)
    out["recall_at_5"] = recall_at_k(sim, q_labels, ref_labels, 5)
    out["map_at_r"] = map_at_r(np.stack([regions[i][0] for i in g_q]) if g_q else np.zeros((0, 1)), q_labels)
    top1 = ref_labels[np.argmax(sim, axis=1)] == q_labels if len(g_ref) else np.zeros(len(g_q), bool)
    out["_hits"] = (np.array(g_q, dtype=np.int64), np.asarray(top1, dtype=bool))
    per_brand: dict[str, list[bool]] = defaultdict(list)
    for hit, i in zip(top1, g_q, strict=True):
        per_brand[queries[i].brand].append(bool(hit))
    out["per_brand"] = {b: {"recall_at_1": float(np.mean(h)), "queries": len(h)} for b, h in sorted(per_brand.items())}
    # claim verification on the best genuine similarity for the claim
    claims = claims or make_claims(eval_set, ref_vectors, regions, seed=seed)
    kinds = np.array(claims.kind)
    scores = _similarity_scores(claims)
    blocks = {k: _auc_block(scores, kinds, k) for k in ("same_brand", "counterfeit", "other_brand")}
    primary = "same_brand" if blocks["same_brand"] else ("counterfeit" if blocks["counterfeit"] else "other_brand")
    out["claim_negatives"] = primary
    for name, block in blocks.items():
        if block:
            out[f"claim_vs_{name}"] = block
    if blocks["counterfeit"]:  # which counterfeit edits the similarity sees: true claims vs each transform's
        transform = np.array([(queries[q].row.transform or "unknown") if k == "counterfeit" else ""
                              for q, k in zip(claims.query, kinds, strict=True)])
        out["claim_auc_by_transform"] = {}
        for t in sorted(set(transform) - {""}):
            mask = (kinds == "true") | (transform == t)
            out["claim_auc_by_transform"][t] = {"auc": roc_auc(scores[mask], kinds[mask] == "true"),
                                                "count": int((transform == t).sum())}
    out["_claims"] = (claims.query, kinds == "true", (kinds == "true") | (kinds == primary), scores)
    if blocks[primary]:
        out["claim_auc"] = blocks[primary]["auc"]
        out["claim_tpr_at_fpr_1pct"] = blocks[primary]["tpr_at_fpr_1pct"]
        out["claim_tpr_at_fpr_5pct"] = blocks[primary]["tpr_at_fpr_5pct"]
        mask = (kinds == "true") | (kinds == primary)
        out["_roc"] = {f"best genuine similarity (true vs {primary} claims)": RocInput(scores[mask], kinds[mask] == "true")}
    if fusion is not None:
        out.update(_fusion_metrics(eval_set, claims, fusion, out))
    return out


def bootstrap_intervals(runs: Sequence[dict[str, Any]], queries: int, *, rounds: int = 1000, seed: int = 0,
                        level: float = 0.95, groups: Sequence[Any] | None = None) -> dict[str, list[tuple[float, float]]]:
    """Percentile intervals of recall@1 and claim AUC, resampling query photos with replacement (a
    photo's claims go together). Several `runs` (metrics of different models on the same eval set and
    claims) are resampled with the same draws, and `difference` holds the intervals of run k minus
    run 0, so two models are compared on paired data.

    With `groups` (one key per query, e.g. its brand) whole groups are resampled instead (a cluster
    bootstrap): photos of one brand share its references and its mark, so they are not independent
    draws, and a claim about brands never seen needs the spread over brands."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != queries:
            raise ValueError(f"{len(groups)} group keys for {queries} queries")
        keys, group_of = np.unique([str(g) for g in groups], return_inverse=True)
        n_groups = len(keys)
    draws = np.zeros((rounds, len(runs), 2))
    for r in range(rounds):
        if groups is None:
            weight = np.bincount(rng.integers(0, queries, queries), minlength=queries)
        else:
            weight = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)[group_of]
        for k, m in enumerate(runs):
            hit_query, hits = m["_hits"]
            w = weight[hit_query]
            draws[r, k, 0] = float((hits * w).sum() / w.sum()) if w.sum() else np.nan
            claim_query, positive, mask, scores = m["_claims"]
            reps = np.where(mask, weight[claim_query], 0)
            draws[r, k, 1] = roc_auc(np.repeat(scores, reps), np.repeat(positive, reps))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100

    def interval(x: np.ndarray) -> tuple[float, float]:
        x = x[np.isfinite(x)]
        return (float(np.percentile(x, lo)), float(np.percentile(x, hi))) if x.size else (np.nan, np.nan)

    out: dict[str, list] = {"recall_at_1": [], "claim_auc": [], "difference_recall_at_1": [], "difference_claim_auc": []}
    for k in range(len(runs)):
        out["recall_at_1"].append(interval(draws[:, k, 0]))
        out["claim_auc"].append(interval(draws[:, k, 1]))
        out["difference_recall_at_1"].append(interval(draws[:, k, 0] - draws[:, 0, 0]))
        out["difference_claim_auc"].append(interval(draws[:, k, 1] - draws[:, 0, 1]))
    return out


def _fusion_metrics(eval_set: EvalSet, claims: ClaimSet, fusion: Fusion, out: dict[str, Any]) -> dict[str, Any]:
    risks = np.array([fusion.risk(v)[0] for v in claims.values])
    y = claims.not_genuine
    decisions = np.array([fusion.policy.decide(r).value for r in risks])
    res: dict[str, Any] = {
        "risk_auc": roc_auc(risks, y),
        "risk_tpr_at_fpr_1pct": tpr_at_fpr(risks, y, 0.01),
        "risk_tpr_at_fpr_5pct": tpr_at_fpr(risks, y, 0.05),
        "genuine_to_takedown": float((decisions[~y] == "takedown").mean()) if (~y).any() else float("nan"),
        "genuine_to_review_or_takedown": float((decisions[~y] != "pass").mean()) if (~y).any() else float("nan"),
        "not_genuine_flagged": float((decisions[y] != "pass").mean()) if y.any() else float("nan"),
    }
    out.setdefault("_roc", {})["fusion risk (all claims, positive = not genuine)"] = RocInput(
        risks, y, {"review": fusion.policy.review_at, "takedown": fusion.policy.takedown_at})
    # counterfeits: flagged (review or takedown) when claiming the brand they imitate, by transform and strength
    by_transform: dict[str, list[bool]] = defaultdict(list)
    by_strength: dict[str, list[bool]] = defaultdict(list)
    for c, kind in enumerate(claims.kind):
        if kind != "counterfeit":
            continue
        row = eval_set.queries[int(claims.query[c])].row
        flagged = decisions[c] != "pass"
        by_transform[row.transform or "unknown"].append(flagged)
        if row.strength is not None:
            for lo, hi in STRENGTH_BINS:
                if lo <= row.strength < hi:
                    by_strength[f"{lo:.2f}-{min(hi, 1.0):.2f}"].append(flagged)
    if by_transform:
        res["counterfeit_flagged_by_transform"] = {k: {"accuracy": float(np.mean(v)), "count": len(v)}
                                                   for k, v in sorted(by_transform.items())}
    if by_strength:
        res["counterfeit_flagged_by_strength"] = {k: {"accuracy": float(np.mean(v)), "count": len(v)}
                                                  for k, v in sorted(by_strength.items())}
    return res
