"""Issue 21: the mark verifier reading the reference as it reads the photo (mark to mark), refitted.

    python training/experiments/issue21/verifier_mark_to_mark.py [--run runs/s17/recal]

As served, a reference is read whole: a package reference against a shelf photo's logo is not the task
the verifier learnt. Here a reference is read both ways too, whole and cut to its own detected mark
(the detector's best box grown 1.25x), and a claim takes the lowest logit over every pair of framings.
The calibration claims are judged so and the fusion refitted with the signal and without it, as
`verifier_fusion.py` does; prints each fit's risk AUC per set. Not in serving.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import markguard.training.calibration as calibration
from markguard.training.calibration import calibrate_vectors, with_known_fake_copies
from markguard.training.data import EvalSet, load_image
from markguard.training.fusion import fit_fusion, threshold_at_fpr
from markguard.training.metrics import roc_auc, tpr_at_fpr
from markguard.training.recalibrate import _config, pipeline_vectors
from markguard.training.train import _load_data
from markguard.vision.artifact import load_artifact, read_verifier
from markguard.vision.scoring import Fusion
from markguard.vision.verify import MarkVerifier

OVERRIDES = ["calibration.ocr_sets=grocery_cal,synth_val", "calibration.balance_sets=true",
             "calibration.thresholds_per_set=true", "calibration.copy_takedown_floor=true"]


class MarkToMark(MarkVerifier):
    """Reference maps (N, R, C, H, W), R framings each: logits over every reference and query framing."""

    @torch.no_grad()
    def logits(self, ref_maps: torch.Tensor, query_maps: torch.Tensor) -> np.ndarray:
        n, r = ref_maps.shape[:2]
        flat = super().logits(ref_maps.reshape(n * r, *ref_maps.shape[2:]), query_maps.reshape(-1, *ref_maps.shape[2:]))
        return flat.reshape(n, -1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/s17/recal"))
    p.add_argument("--verifier", type=Path, default=Path("training/experiments/issue21/verifier-t4"))
    args = p.parse_args()
    torch.set_num_threads(2)
    artifact = load_artifact("serving/default_model")
    detector = artifact.load_detector()
    loaded = read_verifier(args.verifier)
    verifier = MarkToMark(loaded.config)
    verifier.load_state_dict(loaded.state_dict())
    verifier.eval()

    def mark_maps(es: EvalSet, v: MarkVerifier, d, progress: bool = False):  # noqa: ANN001, ANN202
        references = []
        for item in es.references:
            image = load_image(item)[0]
            references.append(v.query_map(image, [m.box for m in detector.detect([image])[0]]))
        queries = [v.query_map(image, [m.box for m in detector.detect([image])[0]])
                   for image in (load_image(i)[0] for i in es.queries)]
        # every reference with two framings (a photo with no detected mark: the whole one twice)
        references = [r if len(r) == 2 else r.repeat(2, 1, 1, 1) for r in references]
        return references, queries

    calibration.mark_maps = mark_maps
    config = _config(artifact, OVERRIDES)
    _, sets, _ = _load_data(config)
    sets = with_known_fake_copies(sets, config, args.run)
    vectors = {n: pipeline_vectors(artifact, es, cache=args.run / f"vectors_{n}.npz", progress=False)
               for n, es in sets.items()}
    cal = calibrate_vectors(vectors, config=config, run_dir=args.run, eval_sets=sets, quiet=True,
                            verifier=verifier, detector=detector)
    c, on, results = config["calibration"], cal.calibrate_on, {}
    for name, change in {"none": lambda x: None, "mark to mark": lambda x: x}.items():
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
        fusion = Fusion(spec)
        row = {"weights": {k: round(v["weight"], 3) for k, v in spec["signals"].items()}}
        for n, cs in cal.claim_sets.items():
            risk = np.array([fusion.risk(v)[0] for v in values[n]])
            logit = np.array([np.nan if v["mark_mismatch"] is None else v["mark_mismatch"] for v in cs.values])
            kinds = np.array(cs.kind)
            near = (kinds == "true") | (kinds == "same_brand") | (kinds == "counterfeit")
            row[n] = {"risk_auc": round(roc_auc(risk, cs.not_genuine), 4),
                      "tpr_at_fpr_5pct": round(tpr_at_fpr(risk, cs.not_genuine, 0.05), 4),
                      "verifier_alone_near": round(roc_auc(logit[near], cs.not_genuine[near]), 4)}
        results[name] = row
        print(name, json.dumps(row), flush=True)
    (args.run / "verifier_mark_to_mark.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
