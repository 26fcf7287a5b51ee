"""Issue 21: the fused risk with the mark verifier against the shipped fusion, on the same served claims.

    python training/experiments/issue21/verifier_paired.py runs/s17/synth-test40-verifier.claims.jsonl
    python training/experiments/issue21/verifier_paired.py runs/s17/grozi-verifier.claims.jsonl --grozi runs/grozi-build

`bench scoring --synth` (or `--grozi`) of a model with the verifier writes every claim's signal values.
Without an OCR gate no step depends on the fusion, so the shipped fusion's risk of the same claim is its
fusion applied to the same values (`mark_mismatch` left out). Prints both claim AUCs and their paired
difference with brand-resampled 95% intervals, overall and per counterfeit transform, and the TPR at
FPR 5% of both (the grocery yardstick's third column). Grocery's claims file (`bench scoring` without
`--synth`/`--grozi`) works too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from markguard.serving.benchmarks.scoring import resample_brands, tpr_at_fpr
from markguard.training.metrics import roc_auc
from markguard.vision.artifact import load_artifact
from markguard.vision.scoring import Fusion


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("claims", type=Path)
    p.add_argument("--shipped", type=Path, default=Path("serving/default_model"))
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--grozi", type=Path, default=None, help="the GroZi build whose manifest names each product's brand")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.claims.read_text().splitlines()]
    if args.grozi is not None:
        manifest = [json.loads(line) for line in (args.grozi / "manifest.jsonl").read_text().splitlines()]
        brand_of = {m["product"]: m["brand"] for m in manifest}
        rows = [{**r, "brand": brand_of[r["product"]]} for r in rows]
    shipped = Fusion(load_artifact(args.shipped).fusion)
    with_verifier = np.array([r["risk"] for r in rows])
    values = [{n: s["value"] for n, s in r["signals"].items() if n != "mark_mismatch"} for r in rows]
    without = np.array([shipped.risk(v)[0] for v in values])
    genuine = np.array([r["genuine"] for r in rows])
    brands = np.array([r["brand"] for r in rows])
    transforms = np.array([r.get("transform") or "" for r in rows])
    out = {}
    for t in ["all", *sorted(set(transforms[~genuine]) - {""})]:
        m = genuine | (transforms == t) if t != "all" else np.ones(len(rows), bool)
        idx = np.nonzero(m)[0]

        def auc(score: np.ndarray, idx: np.ndarray = idx):  # noqa: ANN202
            return lambda d: roc_auc(-score[idx][d], genuine[idx][d])

        a, b = auc(with_verifier), auc(without)
        stats = resample_brands({"with_verifier": a, "shipped": b, "difference": lambda d, a=a, b=b: a(d) - b(d)},
                                brands[idx], boot=args.boot)
        stats["with_verifier"]["value"] = roc_auc(-with_verifier[idx], genuine[idx])
        stats["shipped"]["value"] = roc_auc(-without[idx], genuine[idx])
        stats["difference"]["value"] = stats["with_verifier"]["value"] - stats["shipped"]["value"]
        out[t] = stats
        print(f"{t:22s} " + "  ".join(f"{k} {s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]" for k, s in stats.items()))
    for name, risk in (("with_verifier", with_verifier), ("shipped", without)):  # as bench scoring prints it
        out["all"][name]["tpr_at_fpr_5"] = tpr_at_fpr(genuine.astype(int), -risk, 0.05)
    print("TPR at FPR 5%: " + ", ".join(f"{k} {out['all'][k]['tpr_at_fpr_5']:.3f}" for k in ("with_verifier", "shipped")))
    path = args.claims.with_suffix(".paired.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
