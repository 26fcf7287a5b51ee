"""`markguard bench rings`: ring detection on a simulated marketplace against its planted truth.

Builds `markguard datasets marketplace` (or reuses a built feed), enrolls the grocery catalogue photos
as genuine references and the feed's known fakes as counterfeit ones in a fresh home, scores every
listing with the real engine (no OCR), rebuilds the rings and compares ring membership with the
truth: pairwise precision and recall over seller pairs (two sellers in one ring), and the share of
honest sellers and resellers placed in any ring. A home that already holds the scored feed (`--home`)
is reused, so the ring step can be re-run alone.

`--scale N` measures the network step at catalog size instead (`edge_search_scale`): N synthetic
listings (near-copies of shared photos and vectors among unrelated ones). First `evidence.find_edges`
against an exhaustive search that compares each listing with every older one (how it searched before), in
this process: the same photo and vector pairs, and the time of each. Then the listings are recorded in a
fresh home (SQLite, or `MARKGUARD_DATABASE_URL`) and timed through `rebuild_rings` and an `update_rings`
of the last 50; that update's reading step is timed both ways (older listings looked up by index, every
listing read) on the same catalog, and their edges compared.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

__all__ = ["get_args_parser", "main", "pairwise"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench rings", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1, help="marketplace seed")
    p.add_argument("--feed", type=Path, default=None, help="a built marketplace folder (default: build one)")
    p.add_argument("--home", type=Path, default=None, help="home to score into (default: a fresh temporary one)")
    p.add_argument("--chunk", type=int, default=16, help="listings per forward pass")
    p.add_argument("--source", type=Path, default=None, help="grocery-packages folder")
    p.add_argument("--without-model", action="store_true",
                   help="ablation: record listings without scoring (every decision `pass`, no vectors or known-fake "
                        "matches), to measure the network step alone at full size in seconds")
    p.add_argument("--limit", type=int, default=None,
                   help="only the feed's first N listings (it is in time order: the marketplace up to the N-th "
                        "listing), judged against the truth of the sellers they show; a home holding exactly "
                        "those N scored listings is reused")
    p.add_argument("--scale", type=int, default=0, metavar="N",
                   help="only the edge search, on N synthetic listings, against an exhaustive search")
    p.add_argument("--out", type=Path, default=Path("runs/bench-rings.json"))
    return p


def synthetic_facts(n: int, *, seed: int = 0) -> list:
    """`n` listings as the network sees them: 70% near-copies (0-11 bits flipped) of n/6 shared photos, 30%
    photos of their own; half with the shared photo's vector plus noise; a fifth flagged; n/8 sellers."""
    import datetime as dt

    import numpy as np

    from markguard.serving.intelligence.evidence import ListingFacts

    rng = np.random.default_rng(seed)
    masters = rng.integers(-(1 << 63), (1 << 63) - 1, size=max(1, n // 6), dtype=np.int64)
    directions = rng.normal(size=(len(masters), 64)).astype(np.float32)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    facts = []
    for i in range(n):
        k = int(rng.integers(len(masters)))
        h = int(rng.integers(-(1 << 63), (1 << 63) - 1, dtype=np.int64)) if rng.random() < 0.3 else int(masters[k])
        for b in rng.choice(64, size=int(rng.integers(0, 12)), replace=False):
            h ^= 1 << int(b)
        vector = None
        if rng.random() < 0.5:
            v = directions[k] + rng.normal(size=64).astype(np.float32) * rng.choice([0.05, 0.2, 0.5])
            vector = (v / np.linalg.norm(v)).astype(np.float32)
        facts.append(ListingFacts(row=i, listing_id=f"L{i}", seller=f"s{rng.integers(max(2, n // 8))}", brand_id=1,
                                  phash=(h + (1 << 63)) % (1 << 64) - (1 << 63), flagged=bool(rng.random() < 0.2),
                                  confirmed=False, template=None, serials=[], fake_refs=[], vector=vector, at=at))
    return facts


def exhaustive_pairs(facts: list, *, bits: int, similarity: float) -> tuple[set, set]:
    """(photo, embedding) pairs of listings of two sellers, each listing against every older one: the
    search `find_edges` made before it used an index."""
    import numpy as np

    from markguard.vision.phash import hamming_many

    sellers = np.array([f.seller for f in facts], dtype=object)
    hashes = np.array([f.phash for f in facts], dtype=np.int64)
    flagged = [i for i, f in enumerate(facts) if f.flagged and f.vector is not None]
    vectors = np.stack([facts[i].vector for i in flagged]) if flagged else np.zeros((0, 1), np.float32)
    position = {i: k for k, i in enumerate(flagged)}
    photo, embedding = set(), set()
    for i, f in enumerate(tqdm(facts, desc="exhaustive", mininterval=10)):
        other = sellers[:i] != f.seller
        photo.update((int(j), i) for j in np.nonzero((hamming_many(f.phash, hashes[:i]) <= bits) & other)[0])
        if i in position:
            sims = vectors[: position[i]] @ f.vector
            embedding.update((flagged[k], i) for k in np.nonzero(sims >= similarity)[0] if facts[flagged[k]].seller != f.seller)
    return photo, embedding


def _catalog_timings(facts: list, *, last: int = 50) -> dict[str, Any]:
    """The listings recorded in a fresh home (no scoring: a decision of review where flagged, and their
    vectors), then the seconds of `rebuild_rings` over all but the `last` ones and of the `update_rings`
    that takes those in. Before that update, its reading step both ways on the same catalog: the older
    listings looked up by index (`gather_update`, as updates read) against every listing read
    (`gather_listings`, as they read before), each with its `find_edges`, and whether the edges are equal."""
    import dataclasses
    import datetime as dt

    from markguard.serving.intelligence.evidence import (
        EvidenceConfig,
        find_edges,
        gather_listings,
        gather_update,
    )
    from markguard.serving.intelligence.rings import rebuild_rings, update_rings
    from markguard.serving.intelligence.tables import ListingEvidence, RingState
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Brand, Listing

    config = EvidenceConfig()
    with tempfile.TemporaryDirectory(prefix="markguard-bench-rings-") as tmp:
        home = Home(Path(tmp) / "home")
        with home.sessions.begin() as session:
            brand = Brand(name="Bench", key="bench", wordmarks=[])
            session.add(brand)
            session.flush()
            brand_id = brand.id

        def record(chunk: list) -> None:
            with home.sessions.begin() as session:
                rows = [Listing(listing_id=f.listing_id, seller_id=f.seller, brand_id=brand_id,
                                image_sha256=f"{f.row:064x}", phash=f.phash, risk=0.9 if f.flagged else 0.1,
                                decision="review" if f.flagged else "pass", model_tag="bench",
                                result={"title": f"Bench item lot {f.row % 97}"},
                                scored_at=dt.datetime.now(dt.UTC)) for f in chunk]
                session.add_all(rows)
                session.flush()
                session.add_all(ListingEvidence(listing_row_id=row.id, model_tag="bench", vector=f.vector.tobytes(),
                                                fake_refs=[])
                                for row, f in zip(rows, chunk, strict=True) if f.flagged and f.vector is not None)

        def edges(gathered_facts: list, new_from: int, informative: set[str] | None) -> list[tuple]:
            found = find_edges(gathered_facts, new_from=new_from, config=config, informative=informative)
            return [(e.kind, e.weight, e.a.row, e.b.row, e.detail) for e in found]

        record(facts[:-last])
        t0 = time.perf_counter()
        rebuilt = rebuild_rings(home, config=config)
        rebuild_s = time.perf_counter() - t0
        record(facts[-last:])
        with home.sessions() as session:
            after = session.get(RingState, 1).last_listing_row
            t0 = time.perf_counter()
            gathered = gather_update(session, after_row=after, config=dataclasses.replace(config, lookup_share=1.0))
            looked_up = edges(gathered.facts, gathered.new_from, gathered.informative)
            lookup_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            every = gather_listings(session)
            read_all = edges(every, next(i for i, f in enumerate(every) if f.row > after), None)
            whole_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        updated = update_rings(home, config=config)
        update_s = time.perf_counter() - t0
        home.close()
    return {"rebuild_s": round(rebuild_s, 2), "rebuild_edges": rebuilt.edges, "update_listings": updated.listings,
            "update_s": round(update_s, 2), "update_read_lookups_s": round(lookup_s, 3),
            "update_read_whole_s": round(whole_s, 3), "update_read_speedup": round(whole_s / lookup_s, 1),
            "update_older_looked_up": gathered.new_from, "update_edges": len(looked_up),
            "update_edges_equal": looked_up == read_all}


def edge_search_scale(n: int, out: Path) -> int:
    """`--scale`: the indexed edge search against the exhaustive one on `n` synthetic listings."""
    from markguard.serving.intelligence.evidence import EvidenceConfig, find_edges

    config = EvidenceConfig()
    facts = synthetic_facts(n)
    t0 = time.perf_counter()
    edges = find_edges(facts, new_from=0, config=config)
    indexed_s = time.perf_counter() - t0
    found = {kind: {(e.a.row, e.b.row) for e in edges if e.kind == kind} for kind in ("photo", "embedding")}
    t0 = time.perf_counter()
    photo, embedding = exhaustive_pairs(facts, bits=config.photo_bits, similarity=config.embedding_similarity)
    exhaustive_s = time.perf_counter() - t0
    figures = {"listings": n, "photo_pairs": len(photo), "embedding_pairs": len(embedding),
               "photo_pairs_missed": len(photo - found["photo"]), "photo_pairs_extra": len(found["photo"] - photo),
               "embedding_pairs_differ": len(embedding ^ found["embedding"]),
               "indexed_s": round(indexed_s, 2), "exhaustive_s": round(exhaustive_s, 2),
               "speedup": round(exhaustive_s / indexed_s, 2), **_catalog_timings(facts)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=1))
    print(f"speedup={figures['speedup']} photo_pairs_missed={figures['photo_pairs_missed']} "
          f"embedding_pairs_differ={figures['embedding_pairs_differ']} "
          f"update_read_speedup={figures['update_read_speedup']} update_edges_equal={figures['update_edges_equal']}")
    return 0 if not figures["photo_pairs_missed"] and not figures["photo_pairs_extra"] \
        and figures["update_edges_equal"] else 1


def pairwise(predicted: list[set[str]], truth: list[set[str]]) -> tuple[float, float]:
    """(precision, recall) of same-group seller pairs; an empty prediction has precision 1."""
    def pairs(groups: list[set[str]]) -> set[tuple[str, str]]:
        return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}  # type: ignore[misc]

    p, t = pairs(predicted), pairs(truth)
    hit = len(p & t)
    return (hit / len(p) if p else 1.0), (hit / len(t) if t else 1.0)


def _prepare_home(home_dir: Path, feed: Path, source: Path) -> Any:
    from markguard.datasets.grocery import brand_of
    from markguard.serving.brands import add_brand, get_brand
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import ReferenceKind
    from markguard.vision.errors import NotFound

    home = Home(home_dir)
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    iconic = sorted((source / "iconic" / "Packages").glob("*/*/*_Iconic.jpg"))
    with home.sessions.begin() as session:
        for brand in sorted({brand_of(p.parent.name) for p in iconic}):
            try:
                get_brand(session, brand)
            except NotFound:
                add_brand(session, brand)
    for path in iconic:
        enroll(home, artifact, model, brand=brand_of(path.parent.name), product=path.parent.name,
               inputs=collect_inputs([path]))
    known = feed / "known_fakes.jsonl"
    for line in known.read_text(encoding="utf-8").splitlines() if known.exists() else []:
        item = json.loads(line)
        enroll(home, artifact, model, brand=item["brand"], product=item.get("product"), kind=ReferenceKind.COUNTERFEIT,
               inputs=collect_inputs([feed / item["image"]]))
    return home


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.scale:
        if args.scale <= 50:
            raise SystemExit("--scale must be more than 50 (the last 50 listings are the timed update)")
        return edge_search_scale(args.scale, args.out)
    from sqlalchemy import func, select

    from markguard.datasets.marketplace import MarketplaceOptions, build_marketplace
    from markguard.datasets.sources import default_data_root
    from markguard.serving.brands import add_brand
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.intelligence.feed import ingest_feed, read_feed, record_feed_unscored
    from markguard.serving.intelligence.rings import rebuild_rings
    from markguard.serving.intelligence.tables import Ring, RingMember
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Listing

    source = args.source or default_data_root() / "grocery-packages"
    feed = args.feed
    figures: dict[str, Any] = {"seed": args.seed}
    if feed is None:
        feed = Path(tempfile.mkdtemp(prefix="markguard-marketplace-"))
        t0 = time.perf_counter()
        build_marketplace(feed, source=source, opts=MarketplaceOptions(seed=args.seed))
        figures["build_s"] = round(time.perf_counter() - t0, 1)
    rows = read_feed(feed / "feed.jsonl")
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit("--limit must be at least 1")
        rows = rows[: args.limit]
        figures["limit"] = args.limit
    truth = json.loads((feed / "truth.json").read_text(encoding="utf-8"))
    seen = {r["seller_id"] for r in rows}
    home_dir = args.home or Path(tempfile.mkdtemp(prefix="markguard-bench-rings-"))
    existing = 0
    if (home_dir / "catalog.sqlite").exists() or os.environ.get("MARKGUARD_DATABASE_URL"):
        home = Home(home_dir)
        with home.sessions() as session:
            existing = session.scalar(select(func.count()).select_from(Listing)) or 0
    if existing > len(rows) and args.limit is not None:
        raise SystemExit(f"{home_dir} holds {existing} listings, more than --limit {len(rows)}")
    if existing >= len(rows):
        home = Home(home_dir)
        print(f"reusing {existing} scored listings in {home_dir}", file=sys.stderr)
    elif existing and not args.without_model:  # an interrupted run: score the rest of the feed, in order
        home = Home(home_dir)
        with home.sessions() as session:
            held = list(session.scalars(select(Listing.listing_id).order_by(Listing.id)))
        if held != [r["listing_id"] for r in rows[:existing]]:
            raise SystemExit(f"{home_dir} holds {existing} listings that are not the feed's first ones; "
                             "use a fresh --home")
        print(f"resuming after {existing} scored listings in {home_dir}", file=sys.stderr)
        engine = ScoringEngine(home, ocr=False)
        with tqdm(total=len(rows) - existing, desc="scoring", unit="listing", mininterval=30) as bar:
            report = ingest_feed(engine, rows[existing:], chunk=args.chunk, progress=bar.update)
        figures.update(mode="scored", resumed_after=existing, scoring_s=report.seconds,
                       s_per_listing=round(report.seconds / (len(rows) - existing), 3), decisions=report.decisions)
    else:
        if existing:
            raise SystemExit(f"{home_dir} holds {existing} of {len(rows)} listings; use a fresh --home")
        if args.without_model:
            home = Home(home_dir)
            with home.sessions.begin() as session:
                for brand in sorted({r["brand"] for r in rows if r.get("brand")}):
                    add_brand(session, brand)
            report = record_feed_unscored(home, rows)
        else:
            home = _prepare_home(home_dir, feed, source)
            engine = ScoringEngine(home, ocr=False)
            with tqdm(total=len(rows), desc="scoring", unit="listing", mininterval=30) as bar:
                report = ingest_feed(engine, rows, chunk=args.chunk, progress=bar.update)
        figures.update(mode="without-model" if args.without_model else "scored", scoring_s=report.seconds,
                       s_per_listing=round(report.seconds / len(rows), 3), decisions=report.decisions)
    t0 = time.perf_counter()
    update = rebuild_rings(home)
    figures["rings_s"] = round(time.perf_counter() - t0, 2)
    with home.sessions() as session:
        groups: dict[int, set[str]] = {}
        for ring_id, seller in session.execute(select(RingMember.ring_id, RingMember.seller_id)
                                               .join(Ring, Ring.id == RingMember.ring_id)
                                               .where(Ring.dissolved_at.is_(None))):
            groups.setdefault(ring_id, set()).add(seller)
    predicted = list(groups.values())
    sellers = {s: role for s, role in truth["sellers"].items() if s in seen}  # all of them without --limit
    planted = [g for g in (set(r["sellers"]) & seen for r in truth["rings"]) if g]
    precision, recall = pairwise(predicted, planted)
    honest = [s for s, role in sellers.items() if role in ("honest", "reseller")]
    in_rings = set().union(*predicted) if predicted else set()
    honest_in = sum(1 for s in honest if s in in_rings)
    lone_in = sum(1 for s, role in sellers.items() if role == "lone_counterfeiter" and s in in_rings)
    figures.update(listings=len(rows), sellers=len(sellers), planted_rings=len(planted),
                   rings_found=len(predicted), listing_edges=update.edges,
                   precision=round(precision, 4), recall=round(recall, 4),
                   honest_sellers=len(honest), honest_in_rings=round(honest_in / max(1, len(honest)), 4),
                   lone_counterfeiters_in_rings=lone_in, home=str(home_dir), feed=str(feed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=1))
    print(f"precision={figures['precision']} recall={figures['recall']} honest_in_rings={figures['honest_in_rings']}")
    return 0
