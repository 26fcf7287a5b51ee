"""Retrieval and verification metrics on plain arrays (checked against naive loops in tests).

- recall@k: share of queries with a same-label reference among their k nearest references;
- MAP@R (Musgrave et al. 2020): leave-one-out among the queries, R = number of other queries with the
  query's label, mean over queries of (1/R)·Σ_{i≤R} precision@i·[i-th neighbour relevant];
- ROC-AUC with ties counted one half; TPR at the largest threshold whose FPR stays within a target.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

__all__ = ["RocInput", "recall_at_k", "map_at_r", "roc_auc", "roc_curve", "tpr_at_fpr"]


@dataclasses.dataclass(frozen=True)
class RocInput:
    """One curve's raw material: scores, which are positive, and thresholds to mark on it (name → score;
    a point is `score >= threshold`, as a decision policy applies it)."""

    scores: np.ndarray
    positive: np.ndarray
    operating_points: Mapping[str, float] = dataclasses.field(default_factory=dict)


def recall_at_k(similarity: np.ndarray, query_labels: np.ndarray, ref_labels: np.ndarray, k: int) -> float:
    """`similarity` is (n_queries, n_refs); labels are any comparable values."""
    if similarity.shape[0] == 0:
        return float("nan")
    k = min(k, similarity.shape[1])
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    hits = np.asarray(ref_labels)[top] == np.asarray(query_labels)[:, None]
    return float(hits.any(axis=1).mean())


def map_at_r(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """MAP@R among the rows of `embeddings` (unit vectors), each row leaving itself out."""
    labels = np.asarray(labels)
    n = len(labels)
    sim = embeddings @ embeddings.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    scores = []
    for i in range(n):
        r = int((labels == labels[i]).sum()) - 1
        if r == 0:
            continue
        rel = labels[order[i, :r]] == labels[i]
        precision = np.cumsum(rel) / np.arange(1, r + 1)
        scores.append(float((precision * rel).sum() / r))
    return float(np.mean(scores)) if scores else float("nan")


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties one half (Mann–Whitney)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for `score >= threshold`, thresholds descending from +inf."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    n_pos, n_neg = max(int(positive.sum()), 1), max(int((~positive).sum()), 1)
    tpr = np.array([(scores[positive] >= t).sum() / n_pos for t in thresholds])
    fpr = np.array([(scores[~positive] >= t).sum() / n_neg for t in thresholds])
    return fpr, tpr, thresholds


def tpr_at_fpr(scores: np.ndarray, positive: np.ndarray, fpr: float) -> float:
    """The best TPR over thresholds `score >= t` whose false-positive rate is at most `fpr`."""
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    f, t, _ = roc_curve(scores, positive)
    ok = f <= fpr + 1e-12
    return float(t[ok].max())
