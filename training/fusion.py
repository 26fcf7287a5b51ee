"""Calibrated fusion: a logistic regression over named signals → risk = P(not genuine), fitted on
validation claims, with review/takedown thresholds chosen at target false-positive rates.

The signal vector grows by name: any signal present in the validation values (geometry `inliers`,
OCR signals, …) is fitted; a value that is missing is imputed at the mean, i.e. contributes nothing,
exactly as `vision.scoring.Fusion` treats a missing signal at serving time. A signal that never
varies in the calibration data is left out (its expert prior, if any, then applies at serving).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from markguard.vision.scoring import SIGNAL_NAMES, Fusion

__all__ = ["OperatingPoint", "fit_fusion", "threshold_at_fpr"]


@dataclasses.dataclass(frozen=True)
class OperatingPoint:
    """A risk threshold and what it does on the validation claims."""

    name: str
    threshold: float
    target_fpr: float
    fpr: float  # share of genuine claims at or above the threshold
    tpr: float  # share of not-genuine claims at or above it


def threshold_at_fpr(genuine_risks: np.ndarray, fpr: float) -> float:
    """The lowest threshold t with share(genuine risk ≥ t) ≤ fpr (risk ties never push it over)."""
    g = np.sort(np.asarray(genuine_risks, dtype=np.float64))[::-1]
    if g.size == 0:
        return 1.0
    k = int(math.floor(fpr * g.size + 1e-9))
    if k >= g.size:
        return 0.0
    return float(min(1.0, np.nextafter(g[k], np.inf)))


def _matrix(values: Sequence[Mapping[str, float | None]], names: Sequence[str]) -> np.ndarray:
    x = np.full((len(values), len(names)), np.nan)
    for i, row in enumerate(values):
        for j, name in enumerate(names):
            v = row.get(name)
            if v is not None and math.isfinite(v):
                x[i, j] = v
    return x


def fit_fusion(
    values: Sequence[Mapping[str, float | None]],
    not_genuine: np.ndarray,
    *,
    match_threshold: float,
    takedown_fpr: float = 0.01,
    review_fpr: float = 0.05,
    C: float = 1.0,
    signal_names: Sequence[str] | None = None,
) -> tuple[dict[str, Any], list[OperatingPoint]]:
    """Fit the logistic fusion; returns the `fusion.json` spec and its operating points."""
    y = np.asarray(not_genuine, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("calibration needs both genuine and not-genuine claims")
    if not 0 < takedown_fpr <= review_fpr < 1:
        raise ValueError("need 0 < takedown_fpr <= review_fpr < 1")
    seen = {k for row in values for k, v in row.items() if v is not None}
    names = [n for n in (signal_names or [*SIGNAL_NAMES, *sorted(seen - set(SIGNAL_NAMES))]) if n in seen]
    x = _matrix(values, names)
    varies = [j for j in range(len(names)) if np.nanstd(x[:, j]) > 1e-8]  # a constant cannot be fitted
    names, x = [names[j] for j in varies], x[:, varies]
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    z = np.nan_to_num((x - mean) / scale, nan=0.0)
    clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
    clf.fit(z, y.astype(int))
    spec: dict[str, Any] = {
        "kind": "logistic",
        "bias": float(clf.intercept_[0]),
        "signals": {
            name: {"weight": float(w), "mean": float(m), "scale": float(s)}
            for name, w, m, s in zip(names, clf.coef_[0], mean, scale, strict=True)
        },
        "match_threshold": float(match_threshold),
        "review_at": 0.5,
        "takedown_at": 0.5,
    }
    fusion = Fusion(spec)
    risks = np.array([fusion.risk(row)[0] for row in values])
    points = []
    for name, target in (("takedown", takedown_fpr), ("review", review_fpr)):
        t = threshold_at_fpr(risks[~y], target)
        points.append(OperatingPoint(name=name, threshold=t, target_fpr=target,
                                     fpr=float((risks[~y] >= t).mean()), tpr=float((risks[y] >= t).mean())))
    spec["takedown_at"] = points[0].threshold
    spec["review_at"] = min(points[1].threshold, points[0].threshold)
    spec["calibration"] = {"claims": int(len(y)), "not_genuine": int(y.sum()), "signals": names}
    Fusion(spec)  # validates the thresholds
    return spec, points
