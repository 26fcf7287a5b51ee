"""Evaluating an embedder on an eval set: retrieval, claim verification, per brand, per counterfeit
transform and strength. Claims are scored with `vision.scoring.embedding_signals` against an in-memory
`ReferenceIndex`, the very signals serving computes, so calibration has no train/serve skew.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from markguard.training.data import EvalSet, Item
from markguard.training.metrics import map_at_r, recall_at_k, roc_auc, roc_curve, tpr_at_fpr
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.scoring import Fusion, embedding_signals

__all__ = ["ClaimSet", "build_index", "make_claims", "evaluate_embeddings", "STRENGTH_BINS"]

STRENGTH_BINS = ((0.0, 0.5), (0.5, 0.75), (0.75, 1.0001))


@dataclasses.dataclass
class ClaimSet:
    """One row per (query photo, claimed brand/product): its signals and whether it is genuine."""

    query: np.ndarray  # index into the eval set's queries
    kind: list[str]  # true | same_brand | other_brand | counterfeit
    not_genuine: np.ndarray
    values: list[dict[str, float | None]]


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


def make_claims(eval_set: EvalSet, ref_vectors: np.ndarray, query_vectors: np.ndarray, *, seed: int = 0) -> ClaimSet:
    """Each genuine photo claims its own product (genuine), another product of its brand and another
    brand (not genuine); each counterfeit photo claims the brand it imitates (not genuine)."""
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
    values = []
    for q, _, brand, product in claims:
        brand_id = ids.brands.get(brand, -2)
        values.append(embedding_signals(index, query_vectors[q], brand_id=brand_id, product_id=ids.product(brand, product)))
    return ClaimSet(
        query=np.array([c[0] for c in claims], dtype=np.int64),
        kind=[c[1] for c in claims],
        not_genuine=np.array([c[1] != "true" for c in claims], dtype=bool),
        values=values,
    )


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
    eval_set: EvalSet, ref_vectors: np.ndarray, query_vectors: np.ndarray, *, fusion: Fusion | None = None,
    seed: int = 0, claims: ClaimSet | None = None,
) -> dict[str, Any]:
    """All metrics of one embedder on one eval set (JSON-ready), plus `_roc` curves for plotting."""
    refs, queries = eval_set.references, eval_set.queries
    out: dict[str, Any] = {"references": len(refs), "queries": len(queries)}
    # retrieval: genuine queries against genuine references, label = (brand, product)
    g_ref = [i for i, r in enumerate(refs) if r.genuine]
    g_q = [i for i, q in enumerate(queries) if q.genuine]
    ref_labels = np.array([f"{refs[i].brand}\x1f{refs[i].product}" for i in g_ref])
    q_labels = np.array([f"{queries[i].brand}\x1f{queries[i].product}" for i in g_q])
    sim = query_vectors[g_q] @ ref_vectors[g_ref].T
    out["recall_at_1"] = recall_at_k(sim, q_labels, ref_labels, 1)
    out["recall_at_5"] = recall_at_k(sim, q_labels, ref_labels, 5)
    out["map_at_r"] = map_at_r(query_vectors[g_q], q_labels)
    top1 = ref_labels[np.argmax(sim, axis=1)] == q_labels if len(g_ref) else np.zeros(len(g_q), bool)
    per_brand: dict[str, list[bool]] = defaultdict(list)
    for hit, i in zip(top1, g_q, strict=True):
        per_brand[queries[i].brand].append(bool(hit))
    out["per_brand"] = {b: {"recall_at_1": float(np.mean(h)), "queries": len(h)} for b, h in sorted(per_brand.items())}
    # claim verification on the best genuine similarity for the claim
    claims = claims or make_claims(eval_set, ref_vectors, query_vectors, seed=seed)
    kinds = np.array(claims.kind)
    scores = _similarity_scores(claims)
    blocks = {k: _auc_block(scores, kinds, k) for k in ("same_brand", "counterfeit", "other_brand")}
    primary = "same_brand" if blocks["same_brand"] else ("counterfeit" if blocks["counterfeit"] else "other_brand")
    out["claim_negatives"] = primary
    for name, block in blocks.items():
        if block:
            out[f"claim_vs_{name}"] = block
    if blocks[primary]:
        out["claim_auc"] = blocks[primary]["auc"]
        out["claim_tpr_at_fpr_1pct"] = blocks[primary]["tpr_at_fpr_1pct"]
        out["claim_tpr_at_fpr_5pct"] = blocks[primary]["tpr_at_fpr_5pct"]
        mask = (kinds == "true") | (kinds == primary)
        fpr, tpr, _ = roc_curve(scores[mask], kinds[mask] == "true")
        out["_roc"] = {f"best genuine similarity (true vs {primary} claims)": (fpr.tolist(), tpr.tolist())}
    if fusion is not None:
        out.update(_fusion_metrics(eval_set, claims, fusion, out))
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
    fpr, tpr, _ = roc_curve(risks, y)
    out.setdefault("_roc", {})["fusion risk (all claims, positive = not genuine)"] = (fpr.tolist(), tpr.tolist())
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
