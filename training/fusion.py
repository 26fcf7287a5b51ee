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

With `groups` (the calibration set of each claim), `balance_groups` weighs every set alike in both fits
(a set of 140 grocery claims is not outvoted by 1,000 synthetic ones), and `thresholds_per_group`
chooses each threshold as the highest of the sets' own (so no set sends more than the target share of
its genuine claims there, rather than the pooled claims alone). A signal in `takedown_floor` (the copy of
a known fake) whose fitted weight would not take every claim it fires on past takedown is raised to the
uncentered weight (a prior, log-odds per unit) that takes a claim at the lowest risk the fusion gives
(1e-6) past takedown, whatever the rest says; `calibration.floors` records the fitted and the raised weight.

With `base_claims`, the `staged` signals (known fakes; the mark verifier's, read only against references
that are crops of a mark) are fitted in a second stage, on every claim, with the base fusion (the other
signals, fitted on the base claims) held fixed as an offset: a signal the data shows on some claims only
adds its weight where it is read and moves nothing else.
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

__all__ = ["CONTRARY", "CONTRARY_DROPPED", "MIN_OBSERVATIONS", "STAGED_SIGNALS", "THRESHOLDS_NOTE", "OperatingPoint",
           "fit_fusion", "threshold_at_fpr"]

MIN_OBSERVATIONS = 20  # claims of each class (genuine, not genuine) in which a signal was read, to fit it
CONTRARY = "fitted against its direction"
CONTRARY_DROPPED = ("fitted against its direction, and its prior costs detection at the review false-positive rate "
                    "on the calibration claims: weighs 0")
PRIOR_COST_MARGIN = 0.02  # detection (share of not-genuine claims) a contrary prior must cost before it weighs 0
KNOWN_FAKE_SIGNALS = ("known_fake_nearest", "known_fake_copy")
# read only where the model's mark verifier compares a reference it learnt (crops of a mark), so fitted after
# the base fusion: the claims that show it must not bend the weights of those that do not
PARTIAL_SIGNALS = ("mark_mismatch",)
STAGED_SIGNALS = (*KNOWN_FAKE_SIGNALS, *PARTIAL_SIGNALS)
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


def _group_weights(groups: np.ndarray | None, n: int) -> np.ndarray:
    """Per-claim weights (mean 1) that give every group the same total weight; ones without groups."""
    if groups is None:
        return np.ones(n)
    groups = np.asarray(groups)
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w * n / w.sum()


def _threshold(risks: np.ndarray, y: np.ndarray, fpr: float, groups: np.ndarray | None) -> float:
    """`threshold_at_fpr` on the genuine claims, pooled or (with groups) the highest of each group's own."""
    if groups is None:
        return threshold_at_fpr(risks[~y], fpr)
    groups = np.asarray(groups)
    return max(threshold_at_fpr(risks[~y & (groups == g)], fpr) for g in np.unique(groups[~y]))


def _lift_to(threshold: float) -> float:
    """The log-odds that take the lowest risk `Fusion` gives (1e-6) to `threshold` (kept below 1)."""
    t = min(threshold, 1 - 1e-6)
    return math.log(t / (1 - t)) - math.log(1e-6 / (1 - 1e-6))


def _fit_logistic(x: np.ndarray, y: np.ndarray, names: list[str], directions: Mapping[str, int], C: float,
                  left_out: dict[str, str], sample_weight: np.ndarray | None = None,
                  ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, float]:
    """The balanced logistic fit over standardized signals, dropping the most contrary signal and refitting
    until every weight agrees with its registry direction; (names, mean, scale, weights, bias)."""
    mean = np.nanmean(x, axis=0)
    scale = np.nanstd(x, axis=0)
    z = np.nan_to_num((x - mean) / scale, nan=0.0)
    clf = LogisticRegression(C=C, max_iter=1000, class_weight="balanced")
    if not names:
        raise ValueError(f"no signal could be fitted: {left_out}")
    while True:
        clf.fit(z, y.astype(int), sample_weight=sample_weight)
        contrary = [(-directions.get(n, 0) * w, k) for k, (n, w) in enumerate(zip(names, clf.coef_[0], strict=True))]
        worst, k = max(contrary)
        if worst <= 0 or len(names) == 1:  # the last signal stays: a fusion needs one (tiny runs only)
            break
        left_out[names[k]] = CONTRARY
        names, mean, scale, z = names[:k] + names[k + 1:], np.delete(mean, k), np.delete(scale, k), np.delete(z, k, axis=1)
    return names, mean, scale, clf.coef_[0].copy(), float(clf.intercept_[0])


def _fit_on_offset(z: np.ndarray, y: np.ndarray, offset: np.ndarray, C: float,
                   sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Weights of a balanced, L2-penalized (as scikit-learn's `C`) logistic regression without intercept on
    standardized signals `z`, with a fixed logit `offset` per claim (the base fusion, held as it is)."""
    from scipy.optimize import minimize

    sw = np.where(y, len(y) / (2 * y.sum()), len(y) / (2 * (~y).sum()))
    if sample_weight is not None:
        sw = sw * sample_weight
    t = np.where(y, 1.0, -1.0)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        m = t * (offset + z @ w)
        p = 1.0 / (1.0 + np.exp(np.clip(m, -60, 60)))  # sigmoid(-m)
        return float(C * (sw * np.logaddexp(0.0, -m)).sum() + 0.5 * w @ w), -C * z.T @ (sw * t * p) + w

    return minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x


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
    base_claims: np.ndarray | None = None,
    staged: Sequence[str] = STAGED_SIGNALS,
    prior_cost_margin: float = PRIOR_COST_MARGIN,
    groups: Sequence[str] | None = None,
    balance_groups: bool = False,
    thresholds_per_group: bool = False,
    takedown_floor: Sequence[str] = (),
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
    base = np.ones(len(y), dtype=bool) if base_claims is None else np.asarray(base_claims, dtype=bool)
    if base_claims is not None and (y[base].all() or not y[base].any()):
        raise ValueError("the base claims need both genuine and not-genuine claims")
    later = [n for n in names if n in staged] if base_claims is not None else []
    groups_ = np.asarray(groups) if groups is not None else None
    if groups_ is not None and len(groups_) != len(y):
        raise ValueError("groups needs one entry per claim")
    weights_ = _group_weights(groups_ if balance_groups else None, len(y))
    left_out: dict[str, str] = {}

    def fittable(cols: list[str], rows: np.ndarray) -> tuple[list[str], np.ndarray]:
        x = _matrix([values[i] for i in np.flatnonzero(rows)], cols)
        yy = y[rows]
        for j, name in enumerate(cols):
            read = ~np.isnan(x[:, j])
            if np.nanstd(x[:, j]) <= 1e-8:
                left_out[name] = "never varies"
            elif not read.all() and min(read[yy].sum(), read[~yy].sum()) < min_observations:  # sparse (OCR)
                left_out[name] = f"read in fewer than {min_observations} claims of a class"
        keep = [j for j, n in enumerate(cols) if n not in left_out]
        return [cols[j] for j in keep], x[:, keep]

    # stage 1: every signal but the staged ones, on the base claims
    names, x = fittable([n for n in names if n not in later], base)
    names, mean, scale, weights, bias = _fit_logistic(x, y[base], names, directions, C, left_out,
                                                      sample_weight=weights_[base] if balance_groups else None)
    spec: dict[str, Any] = {
        "kind": "logistic",
        "bias": bias,
        "signals": {name: {"weight": float(w), "mean": float(m), "scale": float(s)}
                    for name, w, m, s in zip(names, weights, mean, scale, strict=True)},
        "match_threshold": float(match_threshold),
        "review_at": 0.5,
        "takedown_at": 0.5,
    }
    if later:
        # stage 2: the staged signals on every claim, with the base fusion (its weights and the priors of the
        # base signals not fitted) held fixed as an offset
        spec["priors"] = {**expert_priors(n for n in registered if n not in names and n not in later),
                          **dict.fromkeys(later, 0.0)}
        offset = np.array([Fusion(spec).risk(row)[0] for row in values]).clip(1e-6, 1 - 1e-6)
        offset = np.log(offset / (1 - offset))
        later, x2 = fittable(later, np.ones(len(y), dtype=bool))
        mean2, scale2 = np.nanmean(x2, axis=0), np.nanstd(x2, axis=0)
        while later:
            z2 = np.nan_to_num((x2 - mean2) / scale2, nan=0.0)
            w2 = _fit_on_offset(z2, y, offset, C, sample_weight=weights_ if balance_groups else None)
            worst, k = max((-directions.get(n, 0) * w, k) for k, (n, w) in enumerate(zip(later, w2, strict=True)))
            if worst <= 0:
                break
            left_out[later[k]] = CONTRARY
            later, mean2, scale2, x2 = later[:k] + later[k + 1:], np.delete(mean2, k), np.delete(scale2, k), \
                np.delete(x2, k, axis=1)
        for name, w, m, s in zip(later, w2 if later else [], mean2, scale2, strict=True):
            spec["signals"][name] = {"weight": float(w), "mean": float(m), "scale": float(s)}
        names = [*names, *later]
    # every registered signal not fitted keeps its expert prior, and the thresholds below are chosen with
    # exactly this fusion, priors included
    spec["priors"] = expert_priors(n for n in registered if n not in names)
    prior_cost: dict[str, dict[str, float]] = {}
    for name in [n for n, why in left_out.items() if why == CONTRARY]:  # a prior the data speaks against
        if spec["priors"].get(name, 0.0):
            kept, dropped = _detection(spec, values, y, review_fpr), _detection(spec, values, y, review_fpr, drop=name)
            prior_cost[name] = {"detection_with_prior": round(kept, 4), "detection_at_0": round(dropped, 4)}
            if dropped > kept + prior_cost_margin:
                spec["priors"][name] = 0.0
                left_out[name] = CONTRARY_DROPPED

    def operating_points() -> tuple[np.ndarray, list[OperatingPoint]]:
        risks = np.array([Fusion(spec).risk(row)[0] for row in values])
        points = []
        for name, target in (("takedown", takedown_fpr), ("review", review_fpr)):
            t = _threshold(risks, y, target, groups_ if thresholds_per_group else None)
            points.append(OperatingPoint(name=name, threshold=t, target_fpr=target,
                                         fpr=float((risks[~y] >= t).mean()), tpr=float((risks[y] >= t).mean())))
        return risks, points

    risks, points = operating_points()
    floors: dict[str, dict[str, float]] = {}
    for name in [n for n in takedown_floor if n in spec["signals"]]:
        fires = np.array([(row.get(name) or 0.0) >= 1.0 for row in values])
        fitted = spec["signals"][name]
        if not fires.any() or fitted["weight"] * (1 - fitted["mean"]) / fitted["scale"] >= \
                _lift_to(points[0].threshold):
            continue
        del spec["signals"][name]
        spec["priors"][name] = 0.0
        for _ in range(20):  # the thresholds move with the weight (genuine claims it fires on)
            needed = _lift_to(points[0].threshold) + 1e-6
            if spec["priors"][name] >= needed:
                break
            spec["priors"][name] = needed
            risks, points = operating_points()
        floors[name] = {"fitted_per_unit": round(fitted["weight"] / fitted["scale"], 4),
                        "raised_to": round(spec["priors"][name], 4)}
        names = [n for n in names if n != name]
    spec["takedown_at"] = points[0].threshold
    spec["review_at"] = min(points[1].threshold, points[0].threshold)
    spec["calibration"] = {"claims": int(len(y)), "not_genuine": int(y.sum()), "signals": names,
                           "left_out": left_out, "thresholds": THRESHOLDS_NOTE}
    if prior_cost:
        spec["calibration"]["contrary_priors"] = prior_cost
    if base_claims is not None:
        spec["calibration"]["base_claims"] = int(base.sum())
    if floors:
        spec["calibration"]["floors"] = floors
    if groups_ is not None and (balance_groups or thresholds_per_group):
        spec["calibration"]["groups"] = {"balanced": bool(balance_groups), "thresholds_per_group": bool(thresholds_per_group),
                                         "claims": {str(g): int((groups_ == g).sum()) for g in np.unique(groups_)}}
    Fusion(spec)  # validates the thresholds
    return spec, points
