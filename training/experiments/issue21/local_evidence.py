"""Issue 21 item 5: local evidence of counterfeit edits on held-out synthetic brands.

    python training/experiments/issue21/local_evidence.py SYNTH_BUILD [--val-brands N] [--test-brands N]
        [--out runs/issue21/local_evidence] [--boot 1000]

For every query photo of the build's val and test brands (`training.data.make_eval_set`: the first
genuine photo of a brand, cropped to its mark grown 1.25x, is the brand's reference, as `bench embedder`
enrols it; the other photos, genuine and counterfeit, claim that brand), computes
`vision.local_evidence.local_evidence` of the whole photo against the reference (serving matches the
whole photo's features too) plus serving's geometry inliers (`geometry.match_features`), and caches
them in OUT/features.jsonl (keyed by image path: a rerun only computes what is missing).

Then per feature: claim AUC (genuine vs each counterfeit transform, and vs all counterfeits) on the test
brands, the direction chosen on val; and a logistic regression on the features (missing values imputed
by the val median, with a no-fit indicator) fitted on val brands only and scored on test brands. 95%
intervals resample test brands. Writes OUT/results.json and OUT/auc_by_transform.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from markguard.training.data import load_image, make_eval_set, read_items
from markguard.training.metrics import roc_auc
from markguard.vision.geometry import extract_features, match_features
from markguard.vision.local_evidence import local_evidence

FEATURES = ["geometry_inliers", "inliers", "orientation", "anisotropy", "mirror_only", "empty_cells", "ink_ratio",
            "abs_ink_ratio", "stroke_ratio", "abs_stroke_ratio", "hue_distance", "residual_max", "no_fit"]
COMBO = ["geometry_inliers", "no_fit", "orientation", "anisotropy", "mirror_only", "empty_cells", "abs_ink_ratio",
         "abs_stroke_ratio", "hue_distance", "residual_max"]


def pick(items, split: str, count: int):
    es = make_eval_set(items, split=split)
    brands = sorted({q.brand for q in es.queries})
    if count and count < len(brands):
        rng = np.random.default_rng(21)
        brands = sorted(rng.choice(brands, size=count, replace=False).tolist())
    keep = set(brands)
    refs = {r.brand: r for r in es.references if r.genuine and r.brand in keep}
    queries = [q for q in es.queries if q.brand in keep and q.brand in refs]
    return refs, queries


def compute(refs, queries, cache: Path, upscale: float) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["image"]] = row
    todo = [q for q in queries if str(q.row.image) not in done]
    ref_cache: dict[str, tuple] = {}
    t0 = time.time()
    with cache.open("a") as f:
        for n, q in enumerate(todo):
            ref = refs[q.brand]
            if ref.brand not in ref_cache:
                image = load_image(ref)[0]
                big = enlarge(image, upscale)
                ref_cache[ref.brand] = (image, extract_features(image), big, extract_features(big, max_side=1024))
            ref_image, ref_features, ref_big, ref_big_features = ref_cache[ref.brand]
            image = load_image(q)[0]
            qf = extract_features(image)
            big = enlarge(image, upscale)
            ev = local_evidence(big, ref_big, query=extract_features(big, max_side=1024), reference=ref_big_features)
            row = {"image": str(q.row.image), "brand": q.brand, "split": q.row.split,
                   "genuine": q.genuine, "transform": q.row.transform, "strength": q.row.strength,
                   "geometry_inliers": match_features(qf, ref_features).inliers, **dataclasses.asdict(ev)}
            f.write(json.dumps(row) + "\n")
            done[row["image"]] = row
            if n % 200 == 0:
                print(f"  {n}/{len(todo)} {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return done


def enlarge(image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return image
    return cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)


def matrix(rows: list[dict], names: list[str], fill: dict[str, float]) -> np.ndarray:
    out = np.zeros((len(rows), len(names)))
    for i, r in enumerate(rows):
        for j, name in enumerate(names):
            out[i, j] = value(r, name, fill)
    return out


def medians(rows: list[dict]) -> dict[str, float]:
    """Each feature's median over the rows that read it: what fills a missing value."""
    fill = {}
    for name in FEATURES:
        vals = [value(r, name, {}) for r in rows if (r.get(name.removeprefix("abs_")) is not None or name == "no_fit")]
        fill[name] = float(np.median(vals)) if vals else 0.0
    return fill


def value(r: dict, name: str, fill: dict[str, float]) -> float:
    if name == "no_fit":
        return float(r["inliers"] == 0)
    if name.startswith("abs_"):
        v = r[name[4:]]
        v = None if v is None else abs(v)
    else:
        v = r[name]
    return fill.get(name, 0.0) if v is None else float(v)


def auc_table(scores: np.ndarray, rows: list[dict], brands: np.ndarray, *, boot: int, seed: int = 0) -> dict:
    """Claim AUC (positive = genuine, score higher = more genuine) overall and per transform, with
    brand-resampled 95% intervals."""
    genuine = np.array([r["genuine"] for r in rows])
    transform = np.array([r["transform"] or "" for r in rows])
    keys, group = np.unique(brands, return_inverse=True)
    rng = np.random.default_rng(seed)
    weights = [np.bincount(rng.integers(0, len(keys), len(keys)), minlength=len(keys))[group] for _ in range(boot)]
    out = {}
    for t in ["all"] + sorted(set(transform) - {""}):
        mask = genuine | ((transform == t) if t != "all" else ~genuine)
        auc = roc_auc(scores[mask], genuine[mask])
        draws = []
        for w in weights:
            reps = np.where(mask, w, 0)
            if reps[genuine].sum() and reps[~genuine & mask].sum():
                draws.append(roc_auc(np.repeat(scores, reps), np.repeat(genuine, reps)))
        lo, hi = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
        out[t] = {"auc": float(auc), "lo": float(lo), "hi": float(hi), "count": int((mask & ~genuine).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("synth", type=Path)
    ap.add_argument("--val-brands", type=int, default=0)
    ap.add_argument("--test-brands", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/issue21/local_evidence"))
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--upscale", type=float, default=2.0,
                    help="enlarge photo and reference by this factor before local evidence (marks are small)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    items = read_items(args.synth)
    data = {}
    for split, count in (("val", args.val_brands), ("test", args.test_brands)):
        refs, queries = pick(items, split, count)
        print(f"{split}: {len(refs)} brands, {len(queries)} queries", file=sys.stderr)
        cached = compute(refs, queries, args.out / "features.jsonl", args.upscale)
        data[split] = [cached[str(q.row.image)] for q in queries]
    val, test = data["val"], data["test"]
    fill = medians(val)
    yv = np.array([r["genuine"] for r in val])
    test_brands = np.array([r["brand"] for r in test])
    results = {"command": " ".join(sys.argv), "val_brands": len({r["brand"] for r in val}),
               "test_brands": len(set(test_brands)), "val_queries": len(val), "test_queries": len(test),
               "fill": fill, "features": {}, "coverage": {}}
    transforms = sorted({r["transform"] for r in test if r["transform"]})
    for t in ["genuine"] + transforms:
        sel = [r for r in test if (r["transform"] or "genuine") == t]
        results["coverage"][t] = float(np.mean([r["inliers"] > 0 for r in sel]))
    for name in FEATURES:
        xv, xt = matrix(val, [name], fill)[:, 0], matrix(test, [name], fill)[:, 0]
        sign = 1.0 if roc_auc(xv, yv) >= 0.5 else -1.0
        results["features"][name] = {"sign": sign, "val_auc": float(roc_auc(sign * xv, yv)),
                                     "test": auc_table(sign * xt, test, test_brands, boot=args.boot)}
    # the same, only on claims where the local evidence found a homography (what the features see when they can look)
    fv, ft = [r for r in val if r["inliers"] > 0], [r for r in test if r["inliers"] > 0]
    yfv = np.array([r["genuine"] for r in fv])
    results["fitted_only"] = {"val_queries": len(fv), "test_queries": len(ft), "features": {}}
    for name in FEATURES[:-1]:
        xv, xt = matrix(fv, [name], fill)[:, 0], matrix(ft, [name], fill)[:, 0]
        sign = 1.0 if roc_auc(xv, yfv) >= 0.5 else -1.0
        results["fitted_only"]["features"][name] = {
            "sign": sign, "test": auc_table(sign * xt, ft, np.array([r["brand"] for r in ft]), boot=args.boot)}
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(matrix(val, COMBO, fill))
    model = LogisticRegression(C=1.0, max_iter=1000).fit(scaler.transform(matrix(val, COMBO, fill)), yv)
    combo = model.decision_function(scaler.transform(matrix(test, COMBO, fill)))
    results["combination"] = {"features": COMBO, "coef": dict(zip(COMBO, model.coef_[0].round(3).tolist(), strict=True)),
                              "val_auc": float(roc_auc(model.decision_function(scaler.transform(matrix(val, COMBO, fill))), yv)),
                              "test": auc_table(combo, test, test_brands, boot=args.boot)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    report(results, transforms)
    plot(results, transforms, args.out / "auc_by_transform.png")


def report(results: dict, transforms: list[str]) -> None:
    cols = ["all"] + transforms
    print(f"val {results['val_brands']} brands / {results['val_queries']} queries; test {results['test_brands']} "
          f"brands / {results['test_queries']} queries; claim AUC on test brands (direction fitted on val)")
    print("fit coverage (share of test claims with a homography): " +
          ", ".join(f"{k} {v:.2f}" for k, v in results["coverage"].items()))
    print(f"{'feature':<18}" + "".join(f"{c[:12]:>14}" for c in cols))
    rows = [(n, f["test"]) for n, f in results["features"].items()] + [("COMBINATION", results["combination"]["test"])]
    for name, table in rows:
        print(f"{name:<18}" + "".join(f"{table[c]['auc']:>14.3f}" for c in cols))
        print(f"{'':<18}" + "".join(f"{'[{:.2f},{:.2f}]'.format(table[c]['lo'], table[c]['hi']):>14}" for c in cols))
    print("combination coefficients (standardised):", results["combination"]["coef"])
    f = results["fitted_only"]
    print(f"only claims with a homography ({f['val_queries']} val, {f['test_queries']} test queries):")
    for name, table in f["features"].items():
        print(f"{name:<18}" + "".join(f"{table['test'][c]['auc']:>14.3f}" for c in cols))
        print(f"{'':<18}" + "".join(f"{'[{:.2f},{:.2f}]'.format(table['test'][c]['lo'], table['test'][c]['hi']):>14}"
                                    for c in cols))


def plot(results: dict, transforms: list[str], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    cols = ["all"] + transforms
    shown = ["geometry_inliers", "anisotropy", "empty_cells", "abs_stroke_ratio", "hue_distance", "residual_max"]
    tables = [(n, results["features"][n]["test"]) for n in shown] + [("combination", results["combination"]["test"])]
    fig, ax = plt.subplots(figsize=(14, 5))
    width = 0.8 / len(tables)
    x = np.arange(len(cols))
    for k, (name, table) in enumerate(tables):
        auc = np.array([table[c]["auc"] for c in cols])
        err = np.array([[auc[i] - table[c]["lo"], table[c]["hi"] - auc[i]] for i, c in enumerate(cols)]).T
        ax.bar(x + k * width, auc, width, yerr=err, label=name, capsize=1.5)
    ax.axhline(0.5, color="k", lw=0.5)
    ax.axhline(0.55, color="r", lw=0.5, ls="--")
    ax.set_xticks(x + 0.4 - width / 2, cols, rotation=30, ha="right")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel("claim AUC, held-out synth test brands")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
