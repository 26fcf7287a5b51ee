"""`markguard bench scoring`: markguard's full scoring against its parts, on real grocery photos.

References: each product's iconic image plus up to `--train-per-product` of its train photos.
Queries: the val photos. For each query, product recall@1 (no claim), and claim verification of
the true product against another product of the same brand (ROC-AUC, TPR at FPR 5%), for:
  (a) the ImageNet global embedding alone (cosine to the claim's references),
  (b) SIFT + RANSAC alone (most inliers against the claim's references),
  (c) markguard's full scoring with the promoted model, or `--model` (risk of the claim).
All three run in this process on the same references and queries; (c)'s claims are written to OUT's
`.claims.jsonl`.

`--synth BUILD` measures counterfeits instead (`synth_counterfeits`): held-out synthetic brands of a
`markguard datasets synth` build (`--synth-split`, default test; `--synth-brands` of them, taken in an
order fixed by a hash of the brand name, so a smaller sample is inside a larger one). Each brand enrols
one reference as `bench embedder` does (`training.data.make_eval_set`: its first genuine photo cropped
to the mark grown 1.25x; wordmark: the brand's name); every other photo of the brand, genuine or
counterfeit, claims the brand. Claim AUC (genuine vs counterfeit) of the full scoring's risk, and of its
`genuine_similarity` signal (the embedder alone on the same claims), over all counterfeits and per
counterfeit transform, with 95% intervals resampling whole brands. Each claim's result is cached in
OUT's `.claims.jsonl` (a rerun scores only what is missing; rows of an older shape are scored again).

`--grozi BUILD` measures the real-photo yardstick instead (`grozi_claims`): GroZi-120 in-store frames
(`markguard datasets grozi`, built there when missing; evaluation only). Every product's reference frames
are enrolled; `--grozi-queries` query frames per product are scored without a claim (product recall@1),
claiming their own product (genuine) and claiming another product (of the same brand where the brand has
one, else any): claim AUC, for (a) the ImageNet global embedding and (c) markguard's full scoring, with 95%
intervals and the paired difference (c − a) resampling whole brands. Every full-scoring claim is written
to OUT's `.claims.jsonl`.

The claims files hold one row shape (`claim_outcome`): the claim, its risk and decision, and each
signal's value and contribution to the risk's log-odds.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

if TYPE_CHECKING:
    from markguard.vision.scoring import ScoreResult

__all__ = ["by_transform", "claim_auc_by_transform", "claim_outcome", "get_args_parser", "grozi_claims", "main", "resample_brands",
           "synth_sample", "tpr_at_fpr"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench scoring", description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MARKGUARD_SHARED_DATA", "../shared/data")))
    p.add_argument("--train-per-product", type=int, default=3, help="train photos enrolled per product")
    p.add_argument("--limit", type=int, default=0,
                   help="score only the first N val photos (0: all); with --grozi, the first N products")
    p.add_argument("--small-marks", type=int, default=60,
                   help="val photos pasted small into clothing photos to measure what regions add (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-scoring.json"))
    p.add_argument("--model", type=Path, default=None,
                   help="artifact folder to score (c) with (default: the promoted model, else the shipped one)")
    p.add_argument("--synth", type=Path, default=None,
                   help="a synthetic build: measure counterfeit claims of its held-out brands instead of grocery")
    p.add_argument("--synth-split", default="test", help="the build's held-out split (default test)")
    p.add_argument("--synth-brands", type=int, default=40, help="held-out brands scored (0: all)")
    p.add_argument("--grozi", type=Path, default=None,
                   help="a GroZi-120 build (made there when missing): measure the real-photo yardstick instead")
    p.add_argument("--grozi-queries", type=int, default=4, help="query frames scored per GroZi product (0: all)")
    p.add_argument("--boot", type=int, default=1000, help="brand-resampled bootstrap draws for the intervals")
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


def by_transform(statistic: Callable[[np.ndarray], float], genuine: np.ndarray, transforms: np.ndarray,
                 brands: np.ndarray, *, boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """`statistic` (of the indices of the claims taken, repeats included) on the genuine claims with all
    counterfeits (`all`) and with each counterfeit transform's, with a 95% interval from `boot` draws
    resampling whole brands (the same draws for every column); `count`: the column's counterfeit claims."""
    genuine = np.asarray(genuine, dtype=bool)
    transforms = np.array(["" if g else str(t) for t, g in zip(transforms, genuine, strict=True)])
    keys, group = np.unique(np.asarray(brands), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = [np.bincount(rng.integers(0, len(keys), len(keys)), minlength=len(keys))[group] for _ in range(boot)]
    claims = np.arange(len(genuine))
    out = {}
    for t in ["all", *sorted(set(transforms[~genuine]))]:
        mask = genuine | (~genuine if t == "all" else transforms == t)
        values = []
        for w in draws:
            reps = np.where(mask, w, 0)
            if reps[genuine].sum() and reps[~genuine].sum():
                values.append(statistic(np.repeat(claims, reps)))
        lo, hi = np.percentile(values, [2.5, 97.5]) if values else (float("nan"), float("nan"))
        out[t] = {"value": round(statistic(claims[mask]), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4),
                  "count": int((mask & ~genuine).sum())}
    return out


def resample_brands(statistics: dict[str, Callable[[np.ndarray], float]], brands: np.ndarray, *,
                    boot: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Each statistic (of the indices of the items taken, repeats included) with a 95% interval from
    `boot` draws resampling whole brands, the same draws for every statistic (so differences are paired)."""
    keys, group = np.unique(np.asarray(brands), return_inverse=True)
    rng = np.random.default_rng(seed)
    items = np.arange(len(group))
    draws = [np.repeat(items, np.bincount(rng.integers(0, len(keys), len(keys)), minlength=len(keys))[group])
             for _ in range(boot)]
    out = {}
    for name, statistic in statistics.items():
        values = [v for v in (statistic(d) for d in draws) if np.isfinite(v)]
        lo, hi = np.percentile(values, [2.5, 97.5]) if values else (float("nan"), float("nan"))
        out[name] = {"value": round(float(statistic(items)), 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4)}
    return out


def grozi_claims(args: argparse.Namespace) -> int:
    """The GroZi-120 yardstick through (a) the ImageNet global embedding and (c) the full scoring."""
    from markguard.datasets.grozi import QUERY_SPLIT, REF_SPLIT
    from markguard.datasets.manifest import read_manifest
    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import PROVISIONAL_FUSION, ensure_default_model, register_artifact
    from markguard.serving.state.home import Home
    from markguard.training.data import ensure_grozi
    from markguard.training.metrics import roc_auc
    from markguard.vision.artifact import build_imagenet_artifact
    from markguard.vision.decode import read_image
    from markguard.vision.embed import embed_images

    manifest = ensure_grozi(args.grozi)
    rows = read_manifest(manifest)
    root = manifest.parent
    name = {r.product: _catalog_name(r.product or "") for r in rows}  # the catalog's names allow fewer characters
    brand_of = {r.product: r.brand for r in rows}
    kept = sorted({r.product for r in rows if r.split == REF_SPLIT})[: args.limit or None]  # --limit: products
    rows = [r for r in rows if r.product in kept]
    refs = [(root / r.image, r.product) for r in rows if r.split == REF_SPLIT]
    by_product: dict[str, list[Path]] = {}
    for r in rows:
        if r.split == QUERY_SPLIT:
            by_product.setdefault(r.product, []).append(root / r.image)
    rng = np.random.default_rng(args.seed)
    queries: list[tuple[Path, str]] = []
    for product, frames in sorted(by_product.items()):
        take = sorted(rng.permutation(len(frames))[: args.grozi_queries or len(frames)])
        queries += [(frames[int(i)], product) for i in take]
    products = sorted({p for _, p in refs})
    negatives = []
    for _, product in queries:
        same = [p for p in products if brand_of[p] == brand_of[product] and p != product]
        pool = same or [p for p in products if p != product]
        negatives.append(pool[int(rng.integers(len(pool)))])
    ref_products = np.array([p for _, p in refs])
    started = time.perf_counter()
    columns: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # (a) ImageNet global embedding: cosine to the claim's references.
        imagenet = build_imagenet_artifact(Path(tmp) / "imagenet", fusion=PROVISIONAL_FUSION).load_embedder()
        r = embed_images(imagenet, [read_image(p) for p, _ in refs], progress=True)
        q = embed_images(imagenet, [read_image(p) for p, _ in queries], progress=True)
        sims = q @ r.T
        columns["a_imagenet_global"] = {
            "hit": np.array([ref_products[int(np.argmax(sims[i]))] == p for i, (_, p) in enumerate(queries)]),
            "true": np.array([sims[i][ref_products == p].max() for i, (_, p) in enumerate(queries)]),
            "false": np.array([sims[i][ref_products == n].max() for i, n in enumerate(negatives)])}

        # (c) markguard's full scoring: every product's reference frames enrolled, as a brand uploads them.
        home = Home(Path(tmp) / "home")
        artifact = (register_artifact(home, args.model, promote_it=True) if args.model
                    else ensure_default_model(home))
        model = artifact.load_embedder()
        with home.sessions.begin() as session:
            for brand in sorted({brand_of[p] for p in products}):
                add_brand(session, brand)
        for product in tqdm(products, desc="enrolling"):
            enroll(home, artifact, model, brand=brand_of[product], product=name[product],
                   inputs=collect_inputs([p for p, pr in refs if pr == product]))
        engine = ScoringEngine(home)
        hit, true, false, claims = [], [], [], []
        for (path, product), negative in zip(tqdm(queries, desc="full scoring"), negatives, strict=True):
            data = path.read_bytes()
            free = engine.score(ScoreRequest(data), record=False)
            hit.append(free.product is not None and free.product.name == name[product])
            for claimed, risks in ((product, true), (negative, false)):
                result = engine.score(ScoreRequest(data, brand=brand_of[claimed], product=name[claimed]), record=False)
                risks.append(-result.risk)
                claims.append({"image": str(path.relative_to(root)), "product": product, "claimed": claimed,
                               "genuine": claimed == product, **claim_outcome(result)})
        columns["c_markguard"] = {"hit": np.array(hit), "true": np.array(true), "false": np.array(false)}
        home.close()

    def auc(column: dict[str, np.ndarray], i: np.ndarray) -> float:
        return roc_auc(np.concatenate([column["true"][i], column["false"][i]]),
                       np.concatenate([np.ones(len(i), bool), np.zeros(len(i), bool)]))

    a, c = columns["a_imagenet_global"], columns["c_markguard"]
    table = resample_brands({
        "a_recall_at_1": lambda i: float(a["hit"][i].mean()), "c_recall_at_1": lambda i: float(c["hit"][i].mean()),
        "a_claim_auc": lambda i: auc(a, i), "c_claim_auc": lambda i: auc(c, i),
        "recall_at_1_c_minus_a": lambda i: float(c["hit"][i].mean() - a["hit"][i].mean()),
        "claim_auc_c_minus_a": lambda i: auc(c, i) - auc(a, i),
    }, np.array([brand_of[p] for _, p in queries]), boot=args.boot, seed=args.seed)
    summary = {"yardstick": "grozi", "build": str(root), "references": len(refs), "queries": len(queries),
               "products": len(products), "brands": len({brand_of[p] for p in products}), "model": artifact.tag,
               "seconds": round(time.perf_counter() - started, 1), "results": table}
    print(f"GroZi-120: {len(products)} products, {len(refs)} reference frames, {len(queries)} query frames "
          f"({args.grozi_queries or 'all'} a product); 95% intervals resample whole brands")
    print(f"{'':22}{'recall@1':>24}{'claim AUC':>24}")
    for label, key in (("a_imagenet_global", "a"), ("c_markguard", "c"), ("c − a", None)):
        cells = [table[f"{key}_{m}" if key else f"{m}_c_minus_a"] for m in ("recall_at_1", "claim_auc")]
        print(f"{label:22}" + "".join(f"{t['value']:>8.3f} [{t['lo']:.3f}, {t['hi']:.3f}]" for t in cells))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    args.out.with_suffix(".claims.jsonl").write_text("".join(json.dumps(c) + "\n" for c in claims))
    print(f"model={artifact.tag} (wrote {args.out} and its .claims.jsonl)")
    return 0


def _catalog_name(product: str) -> str:
    """A GroZi product name in the characters the catalog takes (`%` and the like become spaces)."""
    import re

    return " ".join(re.sub(r"[^\w .&'+\-]", " ", product).split())


def claim_auc_by_transform(scores: np.ndarray, genuine: np.ndarray, transforms: np.ndarray, brands: np.ndarray, *,
                           boot: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Claim AUC (higher score: more genuine) by transform, with brand-resampled intervals (`by_transform`)."""
    from markguard.training.metrics import roc_auc

    scores, genuine = np.asarray(scores, dtype=float), np.asarray(genuine, dtype=bool)
    table = by_transform(lambda i: roc_auc(scores[i], genuine[i]), genuine, transforms, brands, boot=boot, seed=seed)
    return {t: {"auc": row.pop("value"), **row} for t, row in table.items()}


CLAIM_ROWS = 2  # the shape of a claim row in `.claims.jsonl` (1: signals held their values alone)


def claim_outcome(result: ScoreResult) -> dict:
    """What a claims file keeps of a scored claim, for both yardsticks: risk, decision and each signal's
    value and contribution to the risk's log-odds (so a signal can be removed after the fact)."""
    return {"rows": CLAIM_ROWS, "risk": result.risk, "decision": result.decision.value,
            "signals": {name: dataclasses.asdict(signal) for name, signal in result.signals.items()}}


def synth_sample(build: Path, split: str, count: int) -> tuple[dict, list[str], list]:
    """(reference item per brand, the first `count` brands in the order fixed by a hash of their names,
    their claims) of a synthetic build's `split`, as `--synth` scores them."""
    from markguard.datasets.splits import unit_hash
    from markguard.training.data import make_eval_set, read_items

    es = make_eval_set(read_items(build), split=split)
    refs = {r.brand: r for r in es.references if r.genuine}
    brands = sorted(refs, key=lambda b: (unit_hash("bench-scoring-synth", b), b))
    brands = brands[:count] if count else brands
    keep = set(brands)
    return {b: refs[b] for b in brands}, brands, [q for q in es.queries if q.brand in keep]


def synth_counterfeits(args: argparse.Namespace) -> int:
    """`--synth`: counterfeit claims of held-out synthetic brands (see the module's docstring)."""
    from PIL import Image

    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.enroll import InputImage, enroll
    from markguard.serving.registry import ensure_default_model, register_artifact
    from markguard.serving.state.home import Home
    from markguard.training.data import load_image
    from markguard.vision.errors import MarkguardError

    refs, brands, queries = synth_sample(args.synth, args.synth_split, args.synth_brands)
    if not queries:
        print(f"markguard: no {args.synth_split} claims in {args.synth}")
        return 2
    cache = args.out.with_suffix(".claims.jsonl")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp) / "home")
        artifact = (register_artifact(home, args.model, promote_it=True) if args.model
                    else ensure_default_model(home))
        done: dict[str, dict] = {}
        if cache.is_file():
            for line in cache.read_text().splitlines():
                row = json.loads(line)
                if row["model"] == artifact.tag and row.get("rows") == CLAIM_ROWS:  # older rows are scored again
                    done[row["image"]] = row
        model = artifact.load_embedder()
        enrolled = []
        for brand in tqdm(brands, desc="enrolling"):
            with home.sessions.begin() as session:
                try:
                    add_brand(session, brand)
                except MarkguardError:  # a name the catalog refuses, or one like another sampled brand's: left out
                    continue
            buf = io.BytesIO()
            Image.fromarray(load_image(refs[brand])[0]).save(buf, "PNG")
            enroll(home, artifact, model, brand=brand, inputs=[InputImage(str(refs[brand].row.image), buf.getvalue())])
            enrolled.append(brand)
        queries = [q for q in queries if q.brand in set(enrolled)]
        engine = ScoringEngine(home)
        scored = 0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with cache.open("a") as f:
            for q in tqdm([q for q in queries if str(q.row.image) not in done], desc="synthetic claims", mininterval=30):
                result = engine.score(ScoreRequest(q.path.read_bytes(), brand=q.brand), record=False)
                row = {"model": artifact.tag, "image": str(q.row.image), "brand": q.brand, "genuine": q.genuine,
                       "transform": q.row.transform, "strength": q.row.strength, **claim_outcome(result)}
                f.write(json.dumps(row) + "\n")
                f.flush()
                done[row["image"]] = row
                scored += 1
        home.close()
    rows = [done[str(q.row.image)] for q in queries]
    genuine = np.array([r["genuine"] for r in rows])
    transforms = np.array([r["transform"] or "" for r in rows])
    brand_of = np.array([r["brand"] for r in rows])
    similarity = [r["signals"]["genuine_similarity"]["value"] for r in rows]
    tables = {
        "fused_risk": claim_auc_by_transform(-np.array([r["risk"] for r in rows]), genuine, transforms, brand_of,
                                             boot=args.boot, seed=args.seed),
        "embedder_similarity": claim_auc_by_transform(
            np.array([-np.inf if s is None else s for s in similarity]), genuine, transforms, brand_of,
            boot=args.boot, seed=args.seed),
    }
    columns = list(tables["fused_risk"])
    print(f"held-out synthetic brands ({args.synth_split}): {len(enrolled)} brands, {int(genuine.sum())} genuine and "
          f"{int((~genuine).sum())} counterfeit claims; claim AUC [95% brand-resampled interval]")
    print(f"{'':22}" + "".join(f"{c[:14]:>16}" for c in columns))
    print(f"{'counterfeit claims':22}" + "".join(f"{tables['fused_risk'][c]['count']:>16}" for c in columns))
    for name, table in tables.items():
        print(f"{name:22}" + "".join(f"{table[c]['auc']:>16.3f}" for c in columns))
        print(f"{'':22}" + "".join(f"{'[{:.3f},{:.3f}]'.format(table[c]['lo'], table[c]['hi']):>16}" for c in columns))
    summary = {"set": f"{args.synth} {args.synth_split}", "model": artifact.tag, "brands": enrolled,
               "claims": len(rows), "genuine_claims": int(genuine.sum()), "counterfeit_claims": int((~genuine).sum()),
               "scored_now": scored, "seconds": round(time.perf_counter() - t_start, 1), "boot": args.boot,
               "no_similarity": sum(s is None for s in similarity), "results": tables}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"claims={len(rows)} scored now={scored} seconds={summary['seconds']} (wrote {args.out}, claims in {cache})")
    return 0


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
    if args.synth is not None:
        return synth_counterfeits(args)
    if args.grozi is not None:
        return grozi_claims(args)
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
        labels, scores, hits, claims = [], [], [], []
        for q in tqdm(queries, desc="full scoring"):
            data, product, brand = q.read_bytes(), q.parent.name, brand_of(q.parent.name)
            free = engine.score(ScoreRequest(data), record=False)
            hits.append(free.product.name == product)
            if negatives[q]:
                for claimed in (product, negatives[q]):
                    result = engine.score(ScoreRequest(data, brand=brand, product=claimed), record=False)
                    scores.append(-result.risk)
                    claims.append({"image": str(q.relative_to(root)), "brand": brand, "product": product,
                                   "claimed": claimed, "genuine": claimed == product, **claim_outcome(result)})
                labels += [1, 0]
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
    args.out.with_suffix(".claims.jsonl").write_text("".join(json.dumps(c) + "\n" for c in claims))
    print(f"references={len(refs)} queries={len(queries)} full_beats_both={beats} (wrote {args.out} and its "
          f".claims.jsonl)")
    return 0
