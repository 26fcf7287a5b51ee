"""Fusion calibration: monotone risk, thresholds at target false-positive rates, a growing signal vector."""

from __future__ import annotations

import numpy as np
import pytest

from markguard.training.fusion import (
    CONTRARY_DROPPED,
    THRESHOLDS_NOTE,
    fit_fusion,
    threshold_at_fpr,
)
from markguard.training.metrics import roc_auc
from markguard.vision.scoring import Fusion


def _toy(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5  # not genuine
    sim = np.where(y, rng.normal(0.45, 0.1, n), rng.normal(0.7, 0.1, n))
    values = [{"genuine_similarity": float(s), "margin": float(s - 0.5 + rng.normal(0, 0.05)),
               "counterfeit_similarity": None if i % 3 else float(rng.normal(0.5 if bad else 0.35, 0.1))}
              for i, (s, bad) in enumerate(zip(sim, y, strict=True))]
    return values, y


def test_risk_is_monotone_in_genuine_similarity() -> None:
    values, y = _toy()
    spec, _ = fit_fusion(values, y, match_threshold=0.5)
    fusion = Fusion(spec)
    assert spec["signals"]["genuine_similarity"]["weight"] < 0
    risks = [fusion.risk({"genuine_similarity": s, "margin": 0.1, "counterfeit_similarity": 0.4})[0]
             for s in np.linspace(0, 1, 21)]
    assert all(a > b for a, b in zip(risks, risks[1:], strict=False))


def test_thresholds_meet_the_target_false_positive_rates() -> None:
    values, y = _toy(1000, seed=1)
    spec, points = fit_fusion(values, y, match_threshold=0.5, takedown_fpr=0.01, review_fpr=0.05)
    fusion = Fusion(spec)
    risks = np.array([fusion.risk(v)[0] for v in values])
    assert (risks[~y] >= spec["takedown_at"]).mean() <= 0.01
    assert (risks[~y] >= spec["review_at"]).mean() <= 0.05
    assert spec["review_at"] <= spec["takedown_at"]
    take = next(p for p in points if p.name == "takedown")
    assert take.fpr <= 0.01 and take.tpr > 0.3


def test_a_signal_read_on_some_claims_adds_its_weight_there_and_moves_nothing_else() -> None:
    """The mark verifier's signal, read only where a reference is a crop of a mark, is fitted after the base
    fusion with it held fixed: the other weights and the bias are those of the fit without it, and a claim
    where it is not read keeps its risk."""
    values, y = _toy(600, seed=2)
    rng = np.random.default_rng(2)
    marked = [{**v, "mark_mismatch": float(rng.normal(1.0 if bad else 0.0, 0.7)) if i % 2 == 0 else None}
              for i, (v, bad) in enumerate(zip(values, y, strict=True))]
    every = np.ones(len(y), dtype=bool)
    without, _ = fit_fusion(values, y, match_threshold=0.5, base_claims=every)
    with_mark, _ = fit_fusion(marked, y, match_threshold=0.5, base_claims=every)
    assert with_mark["signals"]["mark_mismatch"]["weight"] > 0
    assert with_mark["bias"] == pytest.approx(without["bias"])
    for name, fitted in without["signals"].items():
        assert with_mark["signals"][name]["weight"] == pytest.approx(fitted["weight"])
    plain, verified = Fusion(without), Fusion(with_mark)
    for v, m in zip(values, marked, strict=True):
        if m["mark_mismatch"] is None:
            assert verified.risk(m)[0] == pytest.approx(plain.risk(v)[0])
    read = np.array([m["mark_mismatch"] is not None for m in marked])
    auc = [roc_auc(np.array([f.risk(m)[0] for m, r in zip(marked, read, strict=True) if r]), y[read])
           for f in (plain, verified)]
    assert auc[1] > auc[0]


@pytest.mark.parametrize("seed", range(4))
def test_threshold_at_fpr_is_the_lowest_admissible(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 10, 50) / 10  # ties
    for fpr in (0.0, 0.01, 0.05, 0.3):
        t = threshold_at_fpr(g, fpr)
        assert (g >= t).mean() <= fpr + 1e-12
        lower = [c for c in sorted(set(g)) if c < t]
        assert all((g >= c).mean() > fpr for c in lower)  # naive: every lower candidate breaks the target


def test_new_signals_join_the_vector_and_missing_ones_contribute_nothing() -> None:
    values, y = _toy()
    rng = np.random.default_rng(3)
    for v, bad in zip(values, y, strict=True):
        v["log_inliers"] = float(np.log1p(rng.poisson(5 if bad else 30)))
    spec, _ = fit_fusion(values, y, match_threshold=0.5)
    assert list(spec["signals"]) == ["genuine_similarity", "margin", "counterfeit_similarity", "log_inliers"]
    assert spec["signals"]["log_inliers"]["weight"] < 0
    _, signals = Fusion(spec).risk({"genuine_similarity": 0.6, "margin": 0.1, "counterfeit_similarity": None})
    assert signals["counterfeit_similarity"].contribution == 0.0 and signals["log_inliers"].contribution == 0.0


def test_signals_the_data_cannot_speak_for_keep_their_priors() -> None:
    values, y = _toy(600, seed=5)
    rng = np.random.default_rng(5)
    for i, (v, bad) in enumerate(zip(values, y, strict=True)):
        # a misspelt wordmark read mostly on genuine photos (OCR noise): a fit would call it evidence of genuine
        v["wordmark_near_miss"] = float(rng.random() < (0.1 if bad else 0.6))
        v["serial_invalid"] = float(bad) if i < 15 else None  # read on 15 photos only: perfectly separating, but too few
    spec, _ = fit_fusion(values, y, match_threshold=0.5)
    left_out = spec["calibration"]["left_out"]
    assert left_out["wordmark_near_miss"] == CONTRARY_DROPPED  # fires on genuine claims: its prior would cost
    assert "fewer than" in left_out["serial_invalid"]
    assert "wordmark_near_miss" not in spec["signals"] and "serial_invalid" not in spec["signals"]
    assert spec["signals"]["genuine_similarity"]["weight"] < 0
    # a signal too sparse to fit keeps its expert prior in the spec (and the thresholds were chosen with it),
    # so an invalid serial raises the risk; one the data speaks against weighs nothing
    assert spec["priors"]["serial_invalid"] == 2.5 and spec["priors"]["wordmark_near_miss"] == 0.0
    assert set(spec["priors"]).isdisjoint(spec["signals"])
    fusion = Fusion(spec)
    plain = {"genuine_similarity": 0.6, "margin": 0.1, "counterfeit_similarity": None}
    assert fusion.risk({**plain, "wordmark_near_miss": 1.0})[0] == fusion.risk({**plain, "wordmark_near_miss": 0.0})[0]
    assert fusion.risk({**plain, "serial_invalid": 1.0})[0] > fusion.risk(plain)[0]


def test_thresholds_are_chosen_with_the_priors_serving_applies() -> None:
    """A prior that fires on some genuine claims (a serial misread on 15 photos, too few to fit) lifts their
    risk; the thresholds are chosen on that risk, so the target false-positive rates hold for the fusion served."""
    values, y = _toy(600, seed=6)
    for v in [v for v, bad in zip(values, y, strict=True) if not bad][:15]:
        v["serial_invalid"] = 1.0
    spec, points = fit_fusion(values, y, match_threshold=0.5, takedown_fpr=0.01, review_fpr=0.05)
    assert spec["priors"]["serial_invalid"] > 0 and "serial_invalid" not in spec["signals"]
    assert spec["calibration"]["thresholds"] == THRESHOLDS_NOTE
    served = np.array([Fusion(spec).risk(v)[0] for v in values])
    assert (served[~y] >= spec["takedown_at"]).mean() <= 0.01 and (served[~y] >= spec["review_at"]).mean() <= 0.05
    fitted_only = Fusion({**spec, "priors": dict.fromkeys(spec["priors"], 0.0)})
    alone = np.array([fitted_only.risk(v)[0] for v in values])
    assert threshold_at_fpr(alone[~y], 0.01) < spec["takedown_at"]  # without the priors it would have been lower
    assert points[0].threshold == spec["takedown_at"]


def _two_sets(seed: int = 2):
    """A small set whose genuine claims sit high on a signal the large set barely uses, and a large one."""
    rng = np.random.default_rng(seed)
    values, y, groups = [], [], []
    for name, n, shift in (("small", 150, 0.25), ("large", 1500, 0.0)):
        bad = rng.random(n) < 0.5
        sim = np.where(bad, rng.normal(0.45, 0.1, n), rng.normal(0.7, 0.1, n)) - shift
        for s, b in zip(sim, bad, strict=True):
            values.append({"genuine_similarity": float(s), "margin": float(rng.normal(0.0, 0.1))})
            y.append(bool(b))
            groups.append(name)
    return values, np.array(y), np.array(groups)


def test_thresholds_per_group_hold_the_target_in_every_group() -> None:
    values, y, groups = _two_sets()
    pooled, _ = fit_fusion(values, y, match_threshold=0.5, groups=groups)
    per_group, _ = fit_fusion(values, y, match_threshold=0.5, groups=groups, thresholds_per_group=True)
    assert "groups" not in pooled["calibration"]
    assert per_group["calibration"]["groups"]["thresholds_per_group"] is True
    small = (groups == "small") & ~y

    def share(spec: dict, key: str) -> float:
        fusion = Fusion(spec)
        return float(np.mean([fusion.risk(values[i])[0] >= spec[key] for i in np.flatnonzero(small)]))

    assert share(pooled, "takedown_at") > 0.01  # the pooled threshold lets the small set's genuine claims through
    for key, target in (("takedown_at", 0.01), ("review_at", 0.05)):
        assert share(per_group, key) <= target
    assert per_group["takedown_at"] > pooled["takedown_at"]


def test_balanced_groups_weigh_a_small_set_like_a_large_one() -> None:
    values, y, groups = _two_sets()
    plain, _ = fit_fusion(values, y, match_threshold=0.5, groups=groups)
    balanced, _ = fit_fusion(values, y, match_threshold=0.5, groups=groups, balance_groups=True)
    assert balanced["calibration"]["groups"]["claims"] == {"large": 1500, "small": 150}
    assert balanced["signals"] != plain["signals"]
    with pytest.raises(ValueError, match="one entry per claim"):
        fit_fusion(values, y, match_threshold=0.5, groups=groups[:-1], balance_groups=True)


def test_takedown_floor_lifts_a_weak_copy_weight_past_takedown_from_any_risk() -> None:
    values, y = _toy(600, seed=3)
    rng = np.random.default_rng(3)
    for row, bad in zip(values, y, strict=True):  # a weak copy signal: fires on a fifth of the not-genuine claims
        row["known_fake_copy"] = float(bad and rng.random() < 0.2)
    plain, _ = fit_fusion(values, y, match_threshold=0.5)
    floored, _ = fit_fusion(values, y, match_threshold=0.5, takedown_floor=("known_fake_copy",))
    assert "known_fake_copy" in plain["signals"] and "floors" not in plain["calibration"]
    assert "known_fake_copy" not in floored["signals"]
    floor = floored["calibration"]["floors"]["known_fake_copy"]
    assert floor["raised_to"] == pytest.approx(floored["priors"]["known_fake_copy"], abs=1e-3)
    assert floor["raised_to"] > floor["fitted_per_unit"]
    fusion = Fusion(floored)
    hopeless = {"genuine_similarity": 5.0, "margin": 5.0, "counterfeit_similarity": 0.0}  # as genuine as it gets
    assert fusion.risk(hopeless)[0] < floored["review_at"]
    assert fusion.risk({**hopeless, "known_fake_copy": 1.0})[0] >= floored["takedown_at"]
