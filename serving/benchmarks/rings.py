"""`markguard bench rings`: ring detection on a simulated marketplace against its planted truth.

Builds `markguard datasets marketplace` (or reuses a built feed), enrolls the grocery catalogue photos
as genuine references and the feed's known fakes as counterfeit ones in a fresh home, scores every
listing with the real engine (no OCR), rebuilds the rings and compares ring membership with the
truth: pairwise precision and recall over seller pairs (two sellers in one ring), and the share of
honest sellers and resellers placed in any ring. A home that already holds the scored feed (`--home`)
is reused, so the ring step can be re-run alone.
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
    p.add_argument("--out", type=Path, default=Path("runs/bench-rings.json"))
    return p


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
