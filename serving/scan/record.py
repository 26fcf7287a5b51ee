"""The scan's one catalog writer: records scored listings with `/score`'s recorder
(`serving.listings.record_listing`), one transaction per chunk."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from markguard.serving.brands import get_brand
from markguard.serving.listings import record_listing
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing

__all__ = ["last_listing_row", "record_chunk"]


def last_listing_row(home: Home) -> int:
    with home.sessions() as session:
        return int(session.scalar(select(func.max(Listing.id))) or 0)


def record_chunk(home: Home, outcomes: list[dict[str, Any]]) -> int:
    """Record every `scored` outcome in one transaction (`serving.listings.record_listing`, as `/score`
    records); returns how many."""
    scored = [o for o in outcomes if o["status"] == "scored"]
    if not scored:
        return 0
    with home.sessions.begin() as session:
        by_name: dict[str, int] = {}
        for out in scored:
            score = out["score"]
            brand_id = out.get("brand_id")  # the judged brand's id, as the scorer knew it
            name = score["brand"]["name"]
            if brand_id is None and name is not None:  # a journal written before outcomes carried it
                brand_id = by_name.setdefault(name, get_brand(session, name).id)
            record_listing(session, home, score, listing_id=out["listing_id"], seller_id=out["seller_id"],
                           sha256=out["sha256"], photo_hash=out["phash"], brand_id=brand_id)
    return len(scored)
