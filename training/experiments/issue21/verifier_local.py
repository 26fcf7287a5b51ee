"""Issue 21: do the local evidence features (`vision.local_evidence`) add to the mark verifier?

    python training/experiments/issue21/verifier_local.py runs/issue21/synth-vt \
        --features runs/s19/local_evidence/features.jsonl [--out runs/s19/verifier_local.json] [--boot 1000]

The verifier and the local evidence each see some counterfeit edits: the verifier colour shifts and
degraded print, the local evidence (a homography of the mark onto the reference) aspect distortion and
stroke weight. Are they complementary? On the claims `local_evidence.py` scores (its `pick`: 40 val
brands, 84 test brands, `make_eval_set`'s reference per brand; FEATURES must hold their features, from
`local_evidence.py SYNTH_BUILD --val-brands 40 --test-brands 84 --out DIR`), this reads each claim with the
shipped verifier as serving does (the detector's boxes; the photo whole; the lowest logit; a reference
that fails the gate gives no logit, and the claim is left out). Then logistic fits on the val brands: the
verifier's logit alone, the local combination's 10 features (`local_evidence.COMBO`) alone, and both. It
reports test claim AUC per transform, and the paired difference of "both" against the verifier alone,
with brand-resampled 95% intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_evidence import COMBO, matrix, medians, pick  # noqa: E402

from markguard.serving.benchmarks.scoring import resample_brands  # noqa: E402
from markguard.training.data import load_image, read_items  # noqa: E402
from markguard.training.metrics import roc_auc  # noqa: E402
from markguard.vision.artifact import load_artifact  # noqa: E402


def verifier_logits(refs: dict, queries: list, model: Path) -> dict[str, float]:
    """Each claim's mark mismatch logit as `claim_mark` reads it, by image path (none when the brand's
    reference fails the gate)."""
    artifact = load_artifact(model)
    detector, verifier = artifact.load_detector(), artifact.load_verifier()
    maps = {brand: verifier.reference_map(load_image(item)[0], detector) for brand, item in refs.items()}
    out = {}
    for q in tqdm(queries, desc="verifier"):
        if maps[q.brand] is None:
            continue
        photo = load_image(q)[0]
        boxes = [d.box for d in detector.detect([photo])[0]]
        out[str(q.row.image)] = float(verifier.logits(maps[q.brand][None], verifier.query_map(photo, boxes)).min())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synth", type=Path)
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--model", type=Path, default=Path("serving/default_model"))
    p.add_argument("--out", type=Path, default=Path("runs/s19/verifier_local.json"))
    p.add_argument("--boot", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(2)
    features = {r["image"]: r for r in map(json.loads, args.features.read_text().splitlines())}
    items = read_items(args.synth)
    cache = args.out.with_suffix(".logits.json")
    logits = json.loads(cache.read_text()) if cache.is_file() else {}
    data = {}
    for split, count in (("val", 40), ("test", 84)):
        refs, queries = pick(items, split, count)
        missing = [q for q in queries if str(q.row.image) not in logits]
        if missing:
            logits.update(verifier_logits(refs, missing, args.model))
            cache.write_text(json.dumps(logits))
        data[split] = [{**features[str(q.row.image)], "mark": logits[str(q.row.image)]}
                       for q in queries if str(q.row.image) in logits and str(q.row.image) in features]
    val, test = data["val"], data["test"]
    fill = medians(val)
    y_val, y_test = (np.array([r["genuine"] for r in rows]) for rows in (val, test))
    variants = {"verifier": [], "local": COMBO, "both": COMBO}
    scores = {}
    for name, local in variants.items():
        x_val, x_test = (np.column_stack([matrix(rows, local, fill)] +
                                         ([np.array([[r["mark"]] for r in rows])] if name != "local" else []))
                         for rows in (val, test))
        scaler = StandardScaler().fit(x_val)
        fit = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(x_val), y_val)
        scores[name] = fit.decision_function(scaler.transform(x_test))  # higher: more genuine
    brands = np.array([r["brand"] for r in test])
    transforms = np.array([r["transform"] or "" for r in test])
    out = {"val_claims": len(val), "test_claims": len(test), "test_brands": len(set(brands))}
    for t in ["all", *sorted(set(transforms) - {""})]:
        m = np.nonzero(y_test | (transforms == t) if t != "all" else np.ones(len(test), bool))[0]

        def auc(score: np.ndarray, m: np.ndarray = m):  # noqa: ANN202
            return lambda d: roc_auc(score[m][d], y_test[m][d])

        stats = {k: auc(v) for k, v in scores.items()}
        stats["both_minus_verifier"] = lambda d, a=stats["both"], b=stats["verifier"]: a(d) - b(d)
        out[t] = resample_brands(stats, brands[m], boot=args.boot)
        print(f"{t:22s} " + "  ".join(f"{k} {s['value']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]" for k, s in out[t].items()),
              flush=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
