"""The scan's one catalog writer: records scored listings exactly as `/score` does (the listing row
with its perceptual hash and full result, and its serials), one transaction per chunk."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from markguard.serving.brands import get_brand
from markguard.serving.listings import stored_result
from markguard.serving.serials import record_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing

__all__ = ["last_listing_row", "record_chunk"]


def last_listing_row(home: Home) -> int:
    with home.sessions() as session:
        return int(session.scalar(select(func.max(Listing.id))) or 0)


def record_chunk(home: Home, outcomes: list[dict[str, Any]]) -> int:
    """Record every `scored` outcome in one transaction; returns how many."""
    scored = [o for o in outcomes if o["status"] == "scored"]
    if not scored:
        return 0
    with home.sessions.begin() as session:
        brand_ids: dict[str, int] = {}
        for out in scored:
            score = out["score"]
            name = score["brand"]["name"]  # the brand judged: claimed, or the best-matching one
            if name is not None and name not in brand_ids:
                brand_ids[name] = get_brand(session, name).id
            summary = stored_result(score)  # the full result, as `/score` keeps it
            row = Listing(listing_id=out["listing_id"], seller_id=out["seller_id"],
                          brand_id=brand_ids.get(name), image_sha256=out["sha256"], phash=out["phash"],
                          risk=score["risk"], decision=score["decision"], model_tag=score["model"], result=summary)
            session.add(row)
            session.flush()
            serials = [s["normalized"] for s in score["ocr"]["serials"] if s["format_ok"] is not False]  # as `serials_to_record`
            if serials:
                record_serials(session, home, listing_row_id=row.id, brand_id=row.brand_id,
                               normalized_serials=serials)
    return len(scored)
