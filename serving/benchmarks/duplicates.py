"""`markguard bench duplicates`: the near-duplicate photo search on a catalog of N listings.

Fills a fresh home's catalog (SQLite by default, PostgreSQL with `--database-url`) with N listings of
random 64-bit perceptual hashes, each query photo planted among them with copies 0 to 10 bits away,
then times `CatalogEvidence.duplicates` (indexed band lookups, `vision.phash.band_neighbours`) against
the linear baseline it replaced: every listing's hash read into memory once, then a Hamming scan per
query. Both must find the same listings. Prints ms per query, the baseline's one-off load and memory,
and `band_vs_linear=` (the baseline's warm ms per query over the band search's).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench duplicates", description=__doc__.splitlines()[0])
    p.add_argument("--listings", type=int, default=1_000_000, help="listings in the catalog")
    p.add_argument("--queries", type=int, default=200, help="query photos, each planted with near copies")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--database-url", default=None, help="a PostgreSQL catalog (default: the home's SQLite file)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-duplicates.json"))
    return p


def _fill(home, n: int, queries: np.ndarray, rng: np.random.Generator) -> None:
    """N rows of random hashes; 11 of them per query are its copies 0..10 bits away (8 and less count)."""
    from sqlalchemy import insert

    from markguard.serving.state.schema import Listing
    from markguard.vision.phash import band_keys

    hashes = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64)
    planted = []
    for q in queries:
        for bits in range(11):
            flips = rng.choice(64, size=bits, replace=False)
            planted.append(np.uint64(q.view(np.uint64)) ^ np.uint64(sum(1 << int(b) for b in flips)))
    hashes[: len(planted)] = np.array(planted, np.uint64).view(np.int64)
    rng.shuffle(hashes)
    step = 20_000
    with home.sessions.begin() as session:
        for start in tqdm(range(0, n, step), desc="catalog", unit_scale=step, file=sys.stderr):
            rows = []
            for i in range(start, min(n, start + step)):  # a bulk insert skips Listing's @validates: bands by hand
                h = int(hashes[i])
                b0, b1, b2 = band_keys(h)
                rows.append({"listing_id": f"L{i}", "seller_id": f"S{i % 997}", "image_sha256": "0" * 64, "phash": h,
                             "phash_b0": b0, "phash_b1": b1, "phash_b2": b2, "risk": 0.1, "decision": "pass",
                             "model_tag": "bench", "result": {}})
            session.execute(insert(Listing), rows)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from sqlalchemy import select

    from markguard.serving.engine import _DUPLICATE_BITS, CatalogEvidence
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Listing
    from markguard.vision.phash import hamming_many

    rng = np.random.default_rng(args.seed)
    queries = rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=args.queries, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="mg-bench-dup-") as tmp:
        home = Home(Path(tmp) / "home", database_url=args.database_url) if args.database_url else Home(Path(tmp) / "home")
        try:
            _fill(home, args.listings, queries, rng)
            source = CatalogEvidence(home)
            started = time.perf_counter()
            band = [source.duplicates(int(q), listing=None)[1] for q in tqdm(queries, desc="band search", file=sys.stderr)]
            band_ms = (time.perf_counter() - started) * 1000 / len(queries)

            started = time.perf_counter()  # the baseline: every hash in memory (what each process held before)
            with home.sessions() as session:
                stored = np.array(session.execute(select(Listing.phash)).scalars().all(), np.int64)
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            linear = [int((hamming_many(int(q), stored) <= _DUPLICATE_BITS).sum()) for q in queries]
            linear_ms = (time.perf_counter() - started) * 1000 / len(queries)
        finally:
            home.close()
    if band != linear:
        print(f"markguard: the band search found {sum(band)} near copies, the linear scan {sum(linear)}", file=sys.stderr)
        return 1
    result = {"listings": args.listings, "queries": args.queries, "backend": "postgresql" if args.database_url else "sqlite",
              "found_per_query": sum(band) / len(band), "band_ms_per_query": round(band_ms, 3),
              "linear_ms_per_query": round(linear_ms, 3), "linear_load_seconds": round(load_s, 3),
              "linear_memory_mb": round(stored.nbytes * 2 / 2**20, 1)}  # hashes and their row ids
    print(f"{args.listings:,} listings ({result['backend']}), {args.queries} queries, "
          f"{result['found_per_query']:.1f} copies within {_DUPLICATE_BITS} bits found per query by both")
    print(f"band search   {band_ms:8.3f} ms/query, nothing held in memory")
    print(f"linear scan   {linear_ms:8.3f} ms/query warm, after loading every hash once: "
          f"{load_s:.1f} s and {result['linear_memory_mb']} MB per process")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"band_vs_linear={linear_ms / band_ms:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
