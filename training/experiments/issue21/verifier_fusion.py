"""Issue 21: what the mark verifier does to the fused risk, as `markguard calibrate --verifier` fits it.

    python training/experiments/issue21/verifier_fusion.py [--run runs/s17/recal] [--verifier training/experiments/issue21/verifier-t4]

The calibration sets of the shipped model (`grocery_cal`, `synth_val`, with its known fakes and copies;
`grocery_val` reported) judged once with the verifier, as `markguard calibrate` judges them (its run
folder's cached vectors and OCR reads are reused), then the fusion refitted with the `mark_mismatch`
signal as served (`raw`), without it (`none`: the shipped fit), and hinged at a few logits (only a strong
mismatch counts). Each fit's risk AUC per set (all claims; true claims against same-brand and counterfeit
claims) and its TPR at 5% FPR. Writes `RUN/verifier_fusion.json`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from markguard.training.calibration import Calibration, calibrate_vectors, with_known_fake_copies
from markguard.training.data import EvalSet
from markguard.training.evaluation import ClaimSet
from markguard.training.fusion import fit_fusion, threshold_at_fpr
from markguard.training.metrics import roc_auc, tpr_at_fpr
from markguard.training.recalibrate import _config, pipeline_vectors
from markguard.training.train import _load_data
from markguard.vision.artifact import ModelArtifact, load_artifact, read_verifier
from markguard.vision.scoring import Fusion
from markguard.vision.verify import MarkVerifier

OVERRIDES = ["calibration.ocr_sets=grocery_cal,synth_val", "calibration.balance_sets=true",
             "calibration.thresholds_per_set=true", "calibration.copy_takedown_floor=true"]  # the shipped model's


def hinge(at: float):  # noqa: ANN201
    return lambda x: None if x is None else max(0.0, x - at)


VARIANTS = {"none": lambda x: None, "raw": lambda x: x, "hinge 0": hinge(0.0), "hinge 0.64": hinge(0.64),
            "hinge 1": hinge(1.0)}


def judged(artifact: ModelArtifact, run: Path, verifier: MarkVerifier) -> tuple[Calibration, dict[str, EvalSet], dict]:
    """The shipped model's calibration sets, with its known fakes and copies, judged with `verifier` as
    `markguard calibrate` judges them (the run folder's cached vectors and OCR reads reused)."""
    config = _config(artifact, OVERRIDES)
    _, sets, _ = _load_data(config)
    sets = with_known_fake_copies(sets, config, run)
    vectors = {n: pipeline_vectors(artifact, es, cache=run / f"vectors_{n}.npz", progress=False)
               for n, es in sets.items()}
    cal = calibrate_vectors(vectors, config=config, run_dir=run, eval_sets=sets, quiet=True, verifier=verifier,
                            detector=artifact.load_detector())
    return cal, sets, config


def refit(cal: Calibration, sets: dict[str, EvalSet], config: dict,
          change: Callable[[float | None], float | None]) -> tuple[Fusion, dict[str, list[dict]]]:
    """The fusion fitted as the shipped model's was, on the claims with `mark_mismatch` replaced by
    `change(value)`; and every set's changed values."""
    c, on = config["calibration"], cal.calibrate_on
    values = {n: [{**v, "mark_mismatch": change(v["mark_mismatch"])} for v in cs.values]
              for n, cs in cal.claim_sets.items()}
    other = np.array([v["genuine_similarity"] for n in on for v, k in zip(values[n], cal.claim_sets[n].kind, strict=True)
                      if k == "other_brand" and v["genuine_similarity"] is not None])
    copies = np.array([sets[n].queries[q].row.transform == "known_fake_copy" for n in on for q in cal.claim_sets[n].query])
    spec, _ = fit_fusion([v for n in on for v in values[n]], np.concatenate([cal.claim_sets[n].not_genuine for n in on]),
                         match_threshold=threshold_at_fpr(other, c["match_false_rate"]), takedown_fpr=c["takedown_fpr"],
                         review_fpr=c["review_fpr"], C=c["C"], base_claims=~copies,
                         groups=[n for n in on for _ in values[n]], balance_groups=True, thresholds_per_group=True,
                         takedown_floor=("known_fake_copy",))
    return Fusion(spec), values


def risk_figures(fusion: Fusion, values: list[dict], claims: ClaimSet) -> dict[str, float]:
    """The fused risk's AUC over all claims and over the true, same-brand and counterfeit ones, and its TPR
    at 5% FPR."""
    risk = np.array([fusion.risk(v)[0] for v in values])
    bad = claims.not_genuine
    near = np.array([k != "other_brand" for k in claims.kind])
    return {"risk_auc": round(roc_auc(risk, bad), 4), "risk_auc_same_brand_or_counterfeit":
            round(roc_auc(risk[near], bad[near]), 4), "tpr_at_fpr_5pct": round(tpr_at_fpr(risk, bad, 0.05), 4)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=Path("serving/default_model"))
    p.add_argument("--run", type=Path, default=Path("runs/s17/recal"), help="a `markguard calibrate` run folder")
    p.add_argument("--verifier", type=Path, default=Path("training/experiments/issue21/verifier-t4"))
    args = p.parse_args()
    torch.set_num_threads(2)
    cal, sets, config = judged(load_artifact(args.model), args.run, read_verifier(args.verifier))
    results = {}
    for name, change in VARIANTS.items():
        fusion, values = refit(cal, sets, config, change)
        results[name] = {"weights": {k: round(v["weight"], 3) for k, v in fusion.spec["signals"].items()},
                         **{n: risk_figures(fusion, values[n], cs) for n, cs in cal.claim_sets.items()}}
        print(name, json.dumps(results[name]), flush=True)
    (args.run / "verifier_fusion.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
