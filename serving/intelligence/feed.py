"""Score a marketplace feed (`markguard datasets marketplace`) into a home, keeping what the network needs.

Each listing is scored by the engine's three steps (plan, one batched forward pass per chunk, finish
and record); its photo is kept as a blob (cases export it), its full-photo vector and known-fake
matches go to `listing_evidence`, and the feed's `serial` field is recorded as a serial the listing
showed. A stand-in for `markguard scan` until that lands.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.intelligence.evidence import EvidenceConfig, record_evidence
from markguard.serving.intelligence.tables import ListingEvidence
from markguard.serving.serials import record_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing
from markguard.vision.errors import MarkguardError

__all__ = ["FeedReport", "read_feed", "ingest_feed", "record_feed_unscored"]


@dataclasses.dataclass(frozen=True)
class FeedReport:
    listings: int
    seconds: float
    decisions: dict[str, int]


def read_feed(path: Path) -> list[dict[str, Any]]:
    """The feed's rows, each checked for the fields scoring needs; images resolved beside the feed."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise MarkguardError(f"{path}:{n}: not JSON ({exc})") from None
        missing = [k for k in ("listing_id", "seller_id", "image") if not row.get(k)]
        if missing:
            raise MarkguardError(f"{path}:{n}: missing {', '.join(missing)}")
        image = (path.parent / row["image"]).resolve()
        if path.parent.resolve() not in image.parents:
            raise MarkguardError(f"{path}:{n}: image {row['image']!r} lies outside the feed's folder")
        rows.append({**row, "image": image})
    return rows


def ingest_feed(engine: ScoringEngine, rows: list[dict[str, Any]], *, chunk: int = 16,
                config: EvidenceConfig | None = None, progress: Callable[[int], None] | None = None) -> FeedReport:
    home = engine.home
    started, decisions = time.perf_counter(), {}
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        datas = [Path(r["image"]).read_bytes() for r in part]
        plans = [engine.plan(ScoreRequest(data, brand=r.get("brand"), product=r.get("product"), seller=r["seller_id"],
                                          listing=r["listing_id"], title=r.get("title"), label=str(r["image"])))
                 for r, data in zip(part, datas, strict=True)]
        vectors = engine.embed([c for p in plans for c in p.crops])
        offset = 0
        for row, data, plan in zip(part, datas, plans, strict=True):
            mine = vectors[offset : offset + len(plan.crops)]
            offset += len(plan.crops)
            result = engine.finish(plan, mine, record=True)
            decisions[result.decision.value] = decisions.get(result.decision.value, 0) + 1
            home.put_blob(data)
            with home.sessions.begin() as session:
                listing = session.scalars(select(Listing).where(Listing.listing_id == row["listing_id"])
                                          .order_by(Listing.id.desc()).limit(1)).one()
                listed = row.get("listed_at")
                record_evidence(session, listing_row_id=listing.id, result=result, vector=mine[0], config=config,
                                listed_at=dt.datetime.fromisoformat(listed) if listed else None)
                if row.get("serial"):
                    record_serials(session, home, listing_row_id=listing.id, brand_id=listing.brand_id,
                                   normalized_serials=[row["serial"]])
        if progress is not None:
            progress(len(part))
    return FeedReport(len(rows), round(time.perf_counter() - started, 1), decisions)


def record_feed_unscored(home: Home, rows: list[dict[str, Any]]) -> FeedReport:
    """Record the feed's listings without the model: photo hash, title, serial and time only, every
    decision `pass` (risk 0, model `none`). An ablation of the network step, as if the model flagged
    nothing: the rings it finds rest on photo reuse, serials and title templates alone."""
    from markguard.serving.brands import get_brand
    from markguard.vision.decode import decode_image
    from markguard.vision.phash import phash

    started = time.perf_counter()
    brands: dict[str, int | None] = {}
    with home.sessions.begin() as session:
        for row in rows:
            data = Path(row["image"]).read_bytes()
            brand = row.get("brand")
            if brand is not None and brand not in brands:
                brands[brand] = get_brand(session, brand).id
            listing = Listing(listing_id=row["listing_id"], seller_id=row["seller_id"], brand_id=brands.get(brand),
                              image_sha256=home.put_blob(data), phash=phash(decode_image(data)).int64, risk=0.0,
                              decision="pass", model_tag="none",
                              result={"title": row["title"]} if row.get("title") else {})
            session.add(listing)
            session.flush()
            listed = row.get("listed_at")
            session.add(ListingEvidence(listing_row_id=listing.id, model_tag="none", vector=None, fake_refs=[],
                                        listed_at=dt.datetime.fromisoformat(listed) if listed else None))
            if row.get("serial"):
                record_serials(session, home, listing_row_id=listing.id, brand_id=listing.brand_id,
                               normalized_serials=[row["serial"]])
    return FeedReport(len(rows), round(time.perf_counter() - started, 1), {"pass": len(rows)})
