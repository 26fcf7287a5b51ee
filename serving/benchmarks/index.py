"""`markguard bench index`: FAISS build time, memory, search latency and recall@10 at growing sizes.

Synthetic clustered unit vectors stand in for reference embeddings (brands are clusters, products
sub-clusters); queries are perturbed references, as listing photos are perturbed genuine marks.
Recall@10 is against exact search over the same vectors, run in the same process. The enrollment
rate is measured through the real path (decode, embed, catalog, index save) on rendered images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from markguard.vision.index import ReferenceIndex

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench index", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated reference counts")
    p.add_argument("--dim", type=int, default=256, help="embedding dimension")
    p.add_argument("--brands", type=int, default=1000)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--enroll-images", type=int, default=48, help="images for the enrollment rate (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench-index.json"))
    return p


def _vectors(n: int, dim: int, brands: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.normal(size=(brands, dim)).astype(np.float32)
    brand = rng.integers(0, brands, n)
    v = centres[brand] + 0.9 * rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, brand


def _timed(fn, repeat: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return np.array(times) * 1000


def _recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(t[t >= 0]) & set(f[f >= 0])) / max(1, (t >= 0).sum()) for t, f in zip(truth, found, strict=True)]))


def bench_size(n: int, *, dim: int, brands: int, queries: int, rng: np.random.Generator) -> dict:
    vectors, brand = _vectors(n, dim, brands, rng)
    ids = np.arange(1, n + 1)
    pick = rng.integers(0, n, queries)
    q = vectors[pick] + 0.5 * rng.normal(size=(queries, dim)).astype(np.float32) / np.sqrt(dim) * 4
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    meta = {"brand_ids": brand, "product_ids": np.zeros(n, np.int64), "kinds": np.zeros(n, np.int8)}

    exact = ReferenceIndex(dim)
    exact.ivf_min = n + 1  # never converts: the ground truth
    exact.add(ids, vectors, **meta)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    index = ReferenceIndex(dim)  # picks its own structure by size
    index.add(ids, vectors, **meta)
    build_s = time.perf_counter() - t0
    rss_mb = (psutil.Process().memory_info().rss - rss0) / 2**20

    truth = exact.search(q, 10).ids
    index.search(q[:8], 10)  # warm-up: thread pools, caches
    single = _timed(lambda i: index.search(q[i : i + 1], 10), queries)
    batch_ms = _timed(lambda _: index.search(q, 10), 3).min() / queries
    exact_single = _timed(lambda i: exact.search(q[i : i + 1], 10), min(queries, 50))
    b = int(brand[pick[0]])
    filtered = _timed(lambda i: index.search(q[i : i + 1], 10, brand_id=b), min(queries, 50))
    truth_f = exact.search(q[:50], 10, brand_id=b).ids
    return {
        "references": n,
        "structure": "ivf" if index.is_ivf else "flat",
        "build_s": round(build_s, 2),
        "memory_mb": round(max(rss_mb, 0.0), 1),
        "single_p50_ms": round(float(np.median(single)), 3),
        "single_p95_ms": round(float(np.percentile(single, 95)), 3),
        "batched_ms_per_query": round(float(batch_ms), 4),
        "exact_single_p50_ms": round(float(np.median(exact_single)), 3),
        "speedup_vs_exact": round(float(np.median(exact_single) / np.median(single)), 2),
        "recall_at_10": round(_recall(truth, index.search(q, 10).ids), 4),
        "brand_filtered_p50_ms": round(float(np.median(filtered)), 3),
        "brand_filtered_recall_at_10": round(_recall(truth_f, index.search(q[:50], 10, brand_id=b).ids), 4),
    }


def bench_enroll(count: int, *, seed: int) -> dict:
    """Images/s through `serving.enroll.enroll` with the default model, on rendered images."""
    import io

    from PIL import Image

    from markguard.serving.brands import add_brand
    from markguard.serving.enroll import InputImage, enroll
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        images.append(InputImage(f"synthetic-{i}.jpg", buf.getvalue()))
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(tmp)
        artifact = ensure_default_model(home)
        model = artifact.load_embedder()
        with home.sessions.begin() as session:
            add_brand(session, "Bench")
        t0 = time.perf_counter()
        report = enroll(home, artifact, model, brand="Bench", inputs=images)
        seconds = time.perf_counter() - t0
        home.close()
    return {"images": len(report.added), "seconds": round(seconds, 2), "images_per_s": round(len(report.added) / seconds, 2),
            "model": artifact.tag}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in tqdm([int(s) for s in args.sizes.split(",")], desc="index sizes"):
        rows.append(bench_size(n, dim=args.dim, brands=args.brands, queries=args.queries, rng=rng))
    cols = list(rows[0])
    print(" ".join(f"{c:>14}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]!s:>14}" for c in cols))
    result: dict = {"dim": args.dim, "sizes": rows}
    if args.enroll_images:
        result["enroll"] = bench_enroll(args.enroll_images, seed=args.seed)
        e = result["enroll"]
        print(f"enrollment: {e['images']} images in {e['seconds']} s = {e['images_per_s']} images/s ({e['model']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
