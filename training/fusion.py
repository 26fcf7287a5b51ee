"""Calibrated fusion: a logistic regression over named signals → risk = P(not genuine), fitted on
validation claims, with review/takedown thresholds chosen at target false-positive rates.

The signal vector grows by name: any signal present in the validation values (geometry `inliers`,
OCR signals, …) is fitted; a value that is missing is imputed at the mean, i.e. contributes nothing,
exactly as `vision.scoring.Fusion` treats a missing signal at serving time.

A signal is left out of the fit, and its expert prior (`vision.signals`, written into the spec's
`priors`, 0 for none) then applies at serving and to the thresholds, when the
calibration data cannot speak for it: it never varies, or it is read only in some claims (OCR) and in
fewer than `min_observations` of either class; or its fitted weight points against the registry's
direction (the most contrary one is dropped and the rest refitted, until all agree). Such a contrary
signal keeps its prior only while the prior does not cost detection (not-genuine claims at or above the
threshold that sends `review_fpr` of genuine ones there) on the calibration claims; otherwise it weighs
0, since the thresholds are chosen with every weight and a prior the data contradicts lifts the genuine
claims it fires on (e.g. `known_fake_nearest` firing on as many genuine claims as counterfeit ones).
`calibration.left_out` in the spec says which and why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from markguard.vision.scoring import Fusion
from markguard.vision.signals import expert_priors, signal_directions, signal_names

__all__ = ["CONTRARY", "CONTRARY_DROPPED", "MIN_OBSERVATIONS", "THRESHOLDS_NOTE", "OperatingPoint", "fit_fusion", "threshold_at_fpr"]

MIN_OBSERVATIONS = 20  # claims of each class (genuine, not genuine) in which a signal was read, to fit it
CONTRARY = "fitted against its direction"
CONTRARY_DROPPED = ("fitted against its direction, and its prior costs detection at the review false-positive rate "
                    "on the calibration claims: weighs 0")
THRESHOLDS_NOTE = ("review_at and takedown_at were chosen on the risk of exactly this fusion: the fitted weights "
                   "and the priors of every signal not fitted (vision.signals)")


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


def _detection(spec: dict[str, Any], values: Sequence[Mapping[str, float | None]], y: np.ndarray, fpr: float, *,
               drop: str | None = None) -> float:
    """Share of not-genuine claims at or above the threshold that sends `fpr` of genuine claims there, with
    the spec's fusion (and the prior of `drop` at 0)."""
    fusion = Fusion({**spec, "priors": {**spec["priors"], **({drop: 0.0} if drop else {})}})
    risks = np.array([fusion.risk(row)[0] for row in values])
    return float((risks[y] >= threshold_at_fpr(risks[~y], fpr)).mean())


def fit_fusion(
    values: Sequence[Mapping[str, float | None]],
    not_genuine: np.ndarray,
    *,
    match_threshold: float,
    takedown_fpr: float = 0.01,
    review_fpr: float = 0.05,
    C: float = 1.0,
    names_to_fit: Sequence[str] | None = None,
    directions: Mapping[str, int] | None = None,
    min_observations: int = MIN_OBSERVATIONS,
) -> tuple[dict[str, Any], list[OperatingPoint]]:
    """Fit the logistic fusion; returns the `fusion.json` spec and its operating points."""
    directions = signal_directions() if directions is None else directions
    y = np.asarray(not_genuine, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("calibration needs both genuine and not-genuine claims")
    if not 0 < takedown_fpr <= review_fpr < 1:
        raise ValueError("need 0 < takedown_fpr <= review_fpr < 1")
    seen = {k for row in values for k, v in row.items() if v is not None}
    registered = signal_names()
    names = [n for n in (names_to_fit or [*registered, *sorted(seen - set(registered))]) if n in seen]
    x = _matrix(values, names)
    left_out: dict[str, str] = {}
    for j, name in enumerate(names):
        read = ~np.isnan(x[:, j])
        if np.nanstd(x[:, j]) <= 1e-8:
            left_out[name] = "never varies"
        elif not read.all() and min(read[y].sum(), read[~y].sum()) < min_observations:  # a sparse signal (OCR)
            left_out[name] = f"read in fewer than {min_observations} claims of a class"
    keep = [j for j, n in enumerate(names) if n not in left_out]
    names, x = [names[j] for j in keep], x[:, keep]
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    z = np.nan_to_num((x - mean) / scale, nan=0.0)
    clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
    if not names:
        raise ValueError(f"no signal could be fitted: {left_out}")
    while True:
        clf.fit(z, y.astype(int))
        contrary = [(-directions.get(n, 0) * w, k) for k, (n, w) in enumerate(zip(names, clf.coef_[0], strict=True))]
        worst, k = max(contrary)
        if worst <= 0 or len(names) == 1:  # the last signal stays: a fusion needs one (tiny runs only)
            break
        left_out[names[k]] = CONTRARY
        names, mean, scale, z = names[:k] + names[k + 1:], np.delete(mean, k), np.delete(scale, k), np.delete(z, k, axis=1)
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
        # every registered signal not fitted keeps its expert prior, and the thresholds below are chosen
        # with exactly this fusion, priors included
        "priors": expert_priors(n for n in registered if n not in names),
    }
    for name in [n for n, why in left_out.items() if why == CONTRARY]:  # a prior the data speaks against
        if spec["priors"].get(name, 0.0) and _detection(spec, values, y, review_fpr, drop=name) > \
                _detection(spec, values, y, review_fpr):
            spec["priors"][name] = 0.0
            left_out[name] = CONTRARY_DROPPED
    risks = np.array([Fusion(spec).risk(row)[0] for row in values])
    points = []
    for name, target in (("takedown", takedown_fpr), ("review", review_fpr)):
        t = threshold_at_fpr(risks[~y], target)
        points.append(OperatingPoint(name=name, threshold=t, target_fpr=target,
                                     fpr=float((risks[~y] >= t).mean()), tpr=float((risks[y] >= t).mean())))
    spec["takedown_at"] = points[0].threshold
    spec["review_at"] = min(points[1].threshold, points[0].threshold)
    spec["calibration"] = {"claims": int(len(y)), "not_genuine": int(y.sum()), "signals": names,
                           "left_out": left_out, "thresholds": THRESHOLDS_NOTE}
    Fusion(spec)  # validates the thresholds
    return spec, points
