"""Retrieval and verification metrics against brute-force truths on tiny inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from markguard.training.metrics import map_at_r, recall_at_k, roc_auc, roc_curve, tpr_at_fpr


def _naive_recall(sim, ql, rl, k):
    hits = 0
    for i in range(len(ql)):
        ranked = sorted(range(len(rl)), key=lambda j: (-sim[i][j], j))[:k]
        hits += any(rl[j] == ql[i] for j in ranked)
    return hits / len(ql)


def _naive_map_at_r(emb, labels):
    scores = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        ranked = sorted(others, key=lambda j: (-float(emb[i] @ emb[j]), j))
        r = sum(labels[j] == labels[i] for j in others)
        if r == 0:
            continue
        total, correct = 0.0, 0
        for pos, j in enumerate(ranked[:r], start=1):
            if labels[j] == labels[i]:
                correct += 1
                total += correct / pos
        scores.append(total / r)
    return float(np.mean(scores))


def _naive_auc(scores, positive):
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _naive_tpr_at_fpr(scores, positive, fpr):
    best = 0.0
    for t in [*sorted(set(scores)), np.inf]:
        f = np.mean([s >= t for s, p in zip(scores, positive, strict=True) if not p])
        if f <= fpr:
            best = max(best, np.mean([s >= t for s, p in zip(scores, positive, strict=True) if p]))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_recall_at_k_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    sim = rng.normal(size=(7, 9)).round(1)  # rounding makes ties
    ql, rl = rng.integers(0, 4, 7), rng.integers(0, 4, 9)
    for k in (1, 2, 5, 20):
        assert recall_at_k(sim, ql, rl, k) == pytest.approx(_naive_recall(sim, ql, rl, k))


@pytest.mark.parametrize("seed", range(5))
def test_map_at_r_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(12, 4))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 12)
    assert map_at_r(emb, labels) == pytest.approx(_naive_map_at_r(emb, labels))


def test_map_at_r_perfect_and_known_value() -> None:
    emb = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], dtype=float)
    assert map_at_r(emb, np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert map_at_r(emb, np.array([0, 1, 0, 1])) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_tpr_at_fpr_match_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 25).astype(float)  # many ties
    positive = rng.random(25) < 0.4
    positive[:2] = [True, False]
    assert roc_auc(scores, positive) == pytest.approx(_naive_auc(scores, positive))
    for fpr in (0.0, 0.01, 0.05, 0.2, 0.5):
        assert tpr_at_fpr(scores, positive, fpr) == pytest.approx(_naive_tpr_at_fpr(scores, positive, fpr))


def test_roc_auc_agrees_with_sklearn_and_curve_ends() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores, positive = rng.normal(size=200), rng.random(200) < 0.3
    assert roc_auc(scores, positive) == pytest.approx(roc_auc_score(positive, scores))
    fpr, tpr, _ = roc_curve(scores, positive)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
