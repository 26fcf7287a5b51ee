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
from verifier_fusion import judged, refit, risk_figures  # this folder's: the script's own import path

import markguard.training.calibration as calibration
from markguard.training.data import EvalSet, load_image
from markguard.training.metrics import roc_auc
from markguard.vision.artifact import load_artifact, read_verifier
from markguard.vision.verify import MarkVerifier


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
    cal, sets, config = judged(artifact, args.run, verifier)
    results = {}
    for name, change in {"none": lambda x: None, "mark to mark": lambda x: x}.items():
        fusion, values = refit(cal, sets, config, change)
        row = {"weights": {k: round(v["weight"], 3) for k, v in fusion.spec["signals"].items()}}
        for n, cs in cal.claim_sets.items():
            logit = np.array([np.nan if v["mark_mismatch"] is None else v["mark_mismatch"] for v in cs.values])
            near = np.array([k != "other_brand" for k in cs.kind])
            row[n] = {**risk_figures(fusion, values[n], cs),
                      "verifier_alone_near": round(roc_auc(logit[near], cs.not_genuine[near]), 4)}
        results[name] = row
        print(name, json.dumps(row), flush=True)
    (args.run / "verifier_mark_to_mark.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
