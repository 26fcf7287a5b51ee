"""Issue 21: the mark verifier alone on the grocery calibration sets, against the embedding.

    python training/experiments/issue21/verifier_grocery.py VERIFIER_DIR [--run runs/s17/recal]

Claims of `grocery_val` and `grocery_cal` as `markguard calibrate` makes them (its run folder's cached
vectors), judged with the verifier three ways: the photo's maps as served (detector box and whole
photo), the detector box alone, the whole photo alone. Claim AUC of the verifier's logit and of the
embedding's `genuine_similarity`, true claims against claims of another product of the brand and of
another brand.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from markguard.training.calibration import with_known_fake_copies
from markguard.training.evaluation import PhotoEvidence, make_claims, mark_maps
from markguard.training.metrics import roc_auc
from markguard.training.recalibrate import _config, pipeline_vectors
from markguard.training.train import _load_data
from markguard.vision.artifact import load_artifact, read_verifier


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("verifier", type=Path)
    p.add_argument("--model", type=Path, default=Path("serving/default_model"))
    p.add_argument("--run", type=Path, default=Path("runs/s17/recal"))
    args = p.parse_args()
    torch.set_num_threads(2)
    artifact = load_artifact(args.model)
    config = _config(artifact, [])
    _, sets, _ = _load_data(config)
    sets = with_known_fake_copies(sets, config, args.run)
    verifier, detector = read_verifier(args.verifier), artifact.load_detector()
    for name in ("grocery_val", "grocery_cal"):
        es = sets[name]
        vectors = pipeline_vectors(artifact, es, cache=args.run / f"vectors_{name}.npz", progress=False)
        references, queries = mark_maps(es, verifier, detector)
        for framing, maps in (("box + whole", queries), ("box", [q[:1] for q in queries]),
                              ("whole", [q[-1:] for q in queries])):
            claims = make_claims(es, *vectors, seed=config["seed"],
                                 photos=PhotoEvidence(verifier=verifier, query_marks=maps, reference_marks=references))
            logit = np.array([v["mark_mismatch"] for v in claims.values], float)
            similarity = np.array([v["genuine_similarity"] for v in claims.values], float)
            kinds = np.array(claims.kind)
            for negative in ("same_brand", "other_brand"):
                m = (kinds == "true") | (kinds == negative)
                true = kinds[m] == "true"
                print(f"{name} {framing:12s} true vs {negative:11s} ({int(m.sum())} claims): verifier "
                      f"{roc_auc(-logit[m], true):.3f}, embedding {roc_auc(similarity[m], true):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
