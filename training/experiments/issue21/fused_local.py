"""Issue 21: does the local evidence (`vision.local_evidence`) add to the fused risk serving returns?

    python training/experiments/issue21/fused_local.py SYNTH_BUILD --val runs/issue21/fused/val40.json \
        --test runs/issue21/fused/test40.json [--features runs/issue21/local_evidence/features.jsonl] [--boot 1000]

VAL and TEST are `markguard bench scoring --synth SYNTH_BUILD --synth-split {val,test}` outputs: their
`.claims.jsonl` hold each claim's fused risk and signals. `--features-only` computes (and caches in
FEATURES, keyed by image path; see local_evidence.py) the local evidence of the claims `bench scoring
--synth` picks, before or while the bench runs. Otherwise: a logistic regression on val brands only of
(the fused risk's logit) and (it + the local-evidence combination's features), scored on the test
brands; claim AUC overall and per transform with brand-resampled 95% intervals
(`serving.benchmarks.scoring.claim_auc_by_transform`). Writes OUT/fused_local.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_evidence import COMBO, compute, matrix, medians  # noqa: E402

from markguard.serving.benchmarks.scoring import by_transform, claim_auc_by_transform, synth_sample  # noqa: E402
from markguard.training.metrics import roc_auc  # noqa: E402

FUSED_SIGNALS = ["genuine_similarity", "margin", "inlier_ratio", "log_inliers", "wordmark_near_miss",
                 "other_brand_wordmark", "serial_invalid"]


def claims(path: Path) -> list[dict]:
    summary = json.loads(path.read_text())
    rows = {}
    for line in path.with_suffix(".claims.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["model"] == summary["model"] and r["brand"] in set(summary["brands"]):
            rows[r["image"]] = r
    return list(rows.values())


def logit(p: float) -> float:
    p = min(max(p, 1e-9), 1 - 1e-9)
    return math.log(p / (1 - p))


def paired_difference(a: np.ndarray, b: np.ndarray, genuine: np.ndarray, transforms: np.ndarray,
                      brands: np.ndarray, *, boot: int, seed: int = 0) -> dict[str, dict]:
    """AUC(a) - AUC(b) on the same claims, overall and per transform, 95% interval over brand draws."""
    table = by_transform(lambda i: roc_auc(a[i], genuine[i]) - roc_auc(b[i], genuine[i]), genuine, transforms, brands,
                         boot=boot, seed=seed)
    return {t: {"diff": row["value"], "lo": row["lo"], "hi": row["hi"]} for t, row in table.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("synth", type=Path)
    ap.add_argument("--val", type=Path, default=Path("runs/issue21/fused/val40.json"))
    ap.add_argument("--test", type=Path, default=Path("runs/issue21/fused/test40.json"))
    ap.add_argument("--brands", type=int, default=40, help="with --features-only: brands per split")
    ap.add_argument("--features", type=Path, default=Path("runs/issue21/local_evidence/features.jsonl"))
    ap.add_argument("--features-only", action="store_true")
    ap.add_argument("--upscale", type=float, default=2.0)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=Path("runs/issue21/fused"))
    args = ap.parse_args()
    if args.features_only:
        for split in ("val", "test"):
            refs, _, queries = synth_sample(args.synth, split, args.brands)
            print(f"{split}: {len(refs)} brands, {len(queries)} claims", file=sys.stderr)
            compute(refs, queries, args.features, args.upscale)
        return
    feats = {json.loads(line)["image"]: json.loads(line) for line in args.features.read_text().splitlines()}
    data = {}
    for split, path in (("val", args.val), ("test", args.test)):
        rows = claims(path)
        missing = [r["image"] for r in rows if r["image"] not in feats]
        if missing:
            sys.exit(f"{len(missing)} {split} claims lack local evidence: run with --features-only first")
        data[split] = [{**feats[r["image"]], "risk": r["risk"], "genuine": r["genuine"], "transform": r["transform"],
                        "brand": r["brand"], "fused_signals": {k: v["value"] for k, v in r["signals"].items()}}
                       for r in rows]
    val, test = data["val"], data["test"]
    fill = medians(val)

    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def design(rows: list[dict], local: bool) -> np.ndarray:
        risk = np.array([[-logit(r["risk"])] for r in rows])
        return np.hstack([risk, matrix(rows, COMBO, fill)]) if local else risk

    yv = np.array([r["genuine"] for r in val])
    yt = np.array([r["genuine"] for r in test])
    tt = np.array([r["transform"] or "" for r in test])
    bt = np.array([r["brand"] for r in test])
    tables, coefs, fitted = {}, {}, {}
    tables["fused_risk"] = claim_auc_by_transform(-np.array([r["risk"] for r in test]), yt, tt, bt, boot=args.boot)
    for signal in FUSED_SIGNALS:  # each fused signal alone (unread: the val median), its direction chosen on val
        sv, st = (np.array([r["fused_signals"].get(signal) for r in rows], dtype=float) for rows in (val, test))
        med = float(np.nanmedian(sv)) if np.isfinite(sv).any() else 0.0
        sv, st = np.nan_to_num(sv, nan=med), np.nan_to_num(st, nan=med)
        sign = 1.0 if roc_auc(sv, yv) >= 0.5 else -1.0
        tables[f"signal:{signal}"] = claim_auc_by_transform(sign * st, yt, tt, bt, boot=args.boot)
    for name, cols in (("local_only", "local_only"), ("fused_plus_local", True)):
        if cols == "local_only":
            xv, xt = matrix(val, COMBO, fill), matrix(test, COMBO, fill)
        else:
            xv, xt = design(val, True), design(test, True)
        scaler = StandardScaler().fit(xv)
        model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(xv), yv)
        fitted[name] = model.decision_function(scaler.transform(xt))
        tables[name] = claim_auc_by_transform(fitted[name], yt, tt, bt, boot=args.boot)
        names = COMBO if cols == "local_only" else ["fused_risk_logit", *COMBO]
        coefs[name] = dict(zip(names, model.coef_[0].round(3).tolist(), strict=True))
    # the fused risk and the local combination z-scored on val and summed with equal weights (val fits only
    # the local combination): the fitted weight of the risk is near 0 because the risk is at chance on val
    zv, zt = design(val, False)[:, 0], design(test, False)[:, 0]
    scaler = StandardScaler().fit(matrix(val, COMBO, fill))
    local = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(matrix(val, COMBO, fill)), yv)
    lv = local.decision_function(scaler.transform(matrix(val, COMBO, fill)))
    lt = local.decision_function(scaler.transform(matrix(test, COMBO, fill)))
    equal = (zt - zv.mean()) / zv.std() + (lt - lv.mean()) / lv.std()
    tables["fused_plus_local_equal"] = claim_auc_by_transform(equal, yt, tt, bt, boot=args.boot)
    fused = -np.array([r["risk"] for r in test])
    diffs = {name: paired_difference(scores, fused, yt, tt, bt, boot=args.boot)
             for name, scores in (("local_only", fitted["local_only"]), ("fused_plus_local", fitted["fused_plus_local"]),
                                  ("fused_plus_local_equal", equal))}
    result = {"command": " ".join(sys.argv), "val_brands": len({r["brand"] for r in val}), "val_claims": len(val),
              "test_brands": len(set(bt)), "test_claims": len(test), "coef_standardised": coefs, "results": tables,
              "minus_fused_risk": diffs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fused_local.json").write_text(json.dumps(result, indent=1) + "\n")
    cols = list(tables["fused_risk"])
    print(f"fit on {result['val_brands']} val brands ({len(val)} claims), test {result['test_brands']} brands "
          f"({len(test)} claims); claim AUC [95% brand-resampled]")
    print(f"{'':26}" + "".join(f"{c[:14]:>16}" for c in cols))
    for name, table in tables.items():
        print(f"{name[:26]:26}" + "".join(f"{table[c]['auc']:>16.3f}" for c in cols))
        print(f"{'':26}" + "".join(f"{'[{:.3f},{:.3f}]'.format(table[c]['lo'], table[c]['hi']):>16}" for c in cols))
    print("coefficients (standardised):", json.dumps(coefs))
    for name, d in diffs.items():
        print(f"{name} - fused_risk (paired, same brand draws): " +
              ", ".join(f"{c} {v['diff']:+.3f} [{v['lo']:+.3f},{v['hi']:+.3f}]" for c, v in d.items()))


if __name__ == "__main__":
    main()
