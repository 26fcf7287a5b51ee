"""`markguard bench scoring`: markguard's full scoring against its parts, on real grocery photos.

References: each product's iconic image plus up to `--train-per-product` of its train photos.
Queries: the val photos. For each query, product recall@1 (no claim), and claim verification of
the true product against another product of the same brand (ROC-AUC, TPR at FPR 5%), for:
  (a) the ImageNet global embedding alone (cosine to the claim's references),
  (b) SIFT + RANSAC alone (most inliers against the claim's references),
  (c) markguard's full scoring with the promoted model, or `--model` (risk of the claim).
All three run in this process on the same references and queries.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

__all__ = ["get_args_parser", "main", "tpr_at_fpr"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench scoring", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MARKGUARD_SHARED_DATA", "../shared/data")))
    p.add_argument("--train-per-product", type=int, default=3, help="train photos enrolled per product")
    p.add_argument("--limit", type=int, default=0, help="score only the first N val photos (0: all)")
    p.add_argument("--small-marks", type=int, default=60,
                   help="val photos pasted small into clothing photos to measure what regions add (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-scoring.json"))
    p.add_argument("--model", type=Path, default=None,
                   help="artifact folder to score (c) with (default: the promoted model, else the shipped one)")
    return p


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_target: float) -> float:
    """Highest true-positive rate whose false-positive rate stays at or under `fpr_target`."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= fpr_target].max()) if (fpr <= fpr_target).any() else 0.0


def _summary(labels: list[int], scores: list[float], hits: list[bool]) -> dict:
    y, s = np.array(labels), np.array(scores)
    return {
        "recall_at_1": round(float(np.mean(hits)), 4),
        "claim_auc": round(float(roc_auc_score(y, s)), 4),
        "tpr_at_fpr_5": round(tpr_at_fpr(y, s, 0.05), 4),
    }


def small_mark_lift(engine, queries: list[Path], clothing: Path, rng: np.random.Generator, *,  # type: ignore[no-untyped-def]
                    scale: float = 0.3) -> dict:
    """Product recall@1 without a claim when the package fills a small part of a busy photo:
    the whole photo alone (one region) against markguard's candidate regions. OCR is off here so
    that only the region proposals differ."""
    from PIL import Image

    from markguard.serving.engine import ScoreRequest

    backgrounds = sorted(clothing.glob("train/*/*.jpg"))
    if not backgrounds:
        return {"photos": 0, "scale": scale, "recall_whole_photo": float("nan"), "recall_regions": float("nan")}
    photos = []
    for q in queries:
        bg = Image.open(backgrounds[int(rng.integers(len(backgrounds)))]).convert("RGB").resize((1024, 768))
        pkg = Image.open(q).convert("RGB")
        side = int(scale * 1024)
        pkg = pkg.resize((side, int(side * pkg.height / pkg.width)))
        x, y = int(rng.integers(0, 1024 - pkg.width)), int(rng.integers(0, max(1, 768 - pkg.height)))
        bg.paste(pkg, (x, y))
        buf = io.BytesIO()
        bg.save(buf, "JPEG", quality=88)
        photos.append((buf.getvalue(), q.parent.name))
    scorer = engine.scorer
    ocr, regions = scorer.ocr, scorer.max_regions
    scorer.ocr = None
    recall = {}
    for name, count in (("recall_whole_photo", 1), ("recall_regions", regions)):
        scorer.max_regions = count
        found = [engine.score(ScoreRequest(data), record=False).product.name == product
                 for data, product in tqdm(photos, desc=f"small marks, {count} region(s)")]
        recall[name] = round(float(np.mean(found)), 4)
    scorer.ocr, scorer.max_regions = ocr, regions
    return {"photos": len(photos), "scale": scale, **recall}


def main(argv: list[str] | None = None) -> int:
    from markguard.datasets.grocery import brand_of
    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import PROVISIONAL_FUSION, ensure_default_model, register_artifact
    from markguard.serving.state.home import Home
    from markguard.vision.artifact import build_imagenet_artifact
    from markguard.vision.decode import read_image
    from markguard.vision.embed import embed_images
    from markguard.vision.geometry import extract_features, match_features

    args = get_args_parser().parse_args(argv)
    root = args.data / "grocery-packages"
    rng = np.random.default_rng(args.seed)
    refs: list[tuple[Path, str]] = []  # (image, product)
    for iconic in sorted((root / "iconic" / "Packages").glob("*/*/*_Iconic.jpg")):
        product = iconic.parent.name
        train = sorted((root / "train" / "Packages" / iconic.parent.parent.name / product).glob("*.jpg"))
        refs.append((iconic, product))
        refs += [(p, product) for p in train[: args.train_per_product]]
    queries = sorted((root / "val" / "Packages").glob("*/*/*.jpg"))
    if args.limit:
        queries = queries[: args.limit]
    if not refs or not queries:
        print(f"markguard: no grocery data under {root}")
        return 2
    products = sorted({p for _, p in refs})
    by_brand = {b: [p for p in products if brand_of(p) == b] for b in {brand_of(p) for p in products}}
    negatives = {}
    for q in queries:  # another product of the same brand, where the brand has one
        others = [p for p in by_brand[brand_of(q.parent.name)] if p != q.parent.name]
        negatives[q] = others[int(rng.integers(len(others)))] if others else None
    ref_products = np.array([p for _, p in refs])
    results: dict[str, dict] = {}
    t_start = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        # (a) ImageNet global embedding: cosine to the claim's references.
        imagenet = build_imagenet_artifact(Path(tmp) / "imagenet", fusion=PROVISIONAL_FUSION).load_embedder()
        ref_images = [read_image(p) for p, _ in tqdm(refs, desc="decoding references")]
        query_images = [read_image(q) for q in queries]
        r = embed_images(imagenet, ref_images, progress=True)
        qv = embed_images(imagenet, query_images, progress=True)
        sims = qv @ r.T
        labels, scores, hits = [], [], []
        for i, q in enumerate(queries):
            hits.append(ref_products[int(np.argmax(sims[i]))] == q.parent.name)
            if negatives[q]:
                labels += [1, 0]
                scores += [sims[i][ref_products == q.parent.name].max(), sims[i][ref_products == negatives[q]].max()]
        results["a_imagenet_global"] = _summary(labels, scores, hits)

        # (b) SIFT + RANSAC alone: most inliers against the claim's references.
        ref_features = [extract_features(im) for im in tqdm(ref_images, desc="SIFT references")]
        labels, scores, hits = [], [], []
        for i, q in enumerate(tqdm(queries, desc="SIFT queries")):
            qf = extract_features(query_images[i])
            inliers = np.array([match_features(qf, rf).inliers for rf in ref_features], dtype=float)
            inliers += 1e-3 * sims[i]  # break ties (often 0 against 0) by nothing better than chance
            hits.append(ref_products[int(np.argmax(inliers))] == q.parent.name)
            if negatives[q]:
                labels += [1, 0]
                scores += [inliers[ref_products == q.parent.name].max(), inliers[ref_products == negatives[q]].max()]
        results["b_sift_ransac"] = _summary(labels, scores, hits)

        # (c) markguard's full scoring with the default (promoted) model.
        home = Home(Path(tmp) / "home")
        artifact = (register_artifact(home, args.model, promote_it=True) if args.model
                    else ensure_default_model(home))
        model = artifact.load_embedder()
        with home.sessions.begin() as session:
            for brand in sorted(by_brand):
                add_brand(session, brand)
        for product in tqdm(products, desc="enrolling"):
            paths = [p for p, pr in refs if pr == product]
            enroll(home, artifact, model, brand=brand_of(product), product=product, inputs=collect_inputs(paths))
        engine = ScoringEngine(home)
        labels, scores, hits = [], [], []
        for q in tqdm(queries, desc="full scoring"):
            data, product, brand = q.read_bytes(), q.parent.name, brand_of(q.parent.name)
            free = engine.score(ScoreRequest(data), record=False)
            hits.append(free.product.name == product)
            if negatives[q]:
                true_claim = engine.score(ScoreRequest(data, brand=brand, product=product), record=False)
                false_claim = engine.score(ScoreRequest(data, brand=brand, product=negatives[q]), record=False)
                labels += [1, 0]
                scores += [-true_claim.risk, -false_claim.risk]
        results["c_markguard"] = _summary(labels, scores, hits) | {"model": artifact.tag}
        if args.small_marks:
            lift = small_mark_lift(engine, queries[: args.small_marks], args.data / "clothing", rng)
        home.close()

    print(f"{'':22}{'recall@1':>10}{'claim AUC':>11}{'TPR@FPR5%':>11}")
    for name, row in results.items():
        print(f"{name:22}{row['recall_at_1']:>10.3f}{row['claim_auc']:>11.3f}{row['tpr_at_fpr_5']:>11.3f}")
    c = results["c_markguard"]
    beats = all(c[m] > max(results[o][m] for o in ("a_imagenet_global", "b_sift_ransac"))
                for m in ("recall_at_1", "claim_auc", "tpr_at_fpr_5"))
    summary = {"references": len(refs), "queries": len(queries), "claim_pairs": len(labels) // 2,
               "seconds": round(time.perf_counter() - t_start, 1), "results": results, "full_beats_both": beats}
    if args.small_marks:
        summary["small_marks"] = lift
        print(f"small marks ({lift['photos']} photos, package at {lift['scale']:.0%} of the frame): "
              f"recall@1 whole photo only {lift['recall_whole_photo']:.3f}, with regions {lift['recall_regions']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"references={len(refs)} queries={len(queries)} full_beats_both={beats} (wrote {args.out})")
    return 0
