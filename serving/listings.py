"""Recording a scored listing: the one writer of `Listing` rows, used by `/score` and the CLI (through
`ScoringEngine.record`) and by scans (`serving.scan.record`), so a listing is recorded the same way
whichever way it was scored: its row (perceptual hash, decision summary, the judged brand) and the
serials its photo showed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from markguard.serving.serials import record_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing

__all__ = ["record_listing", "serials_of"]


def serials_of(score: Mapping[str, Any]) -> list[str]:
    """The serials of a score JSON worth remembering: those the brand's pattern does not reject (as
    `serving.serials.serials_to_record` on the evidence)."""
    return [s["normalized"] for s in (score.get("ocr") or {}).get("serials", []) if s["format_ok"] is not False]


def record_listing(session: Session, home: Home, score: Mapping[str, Any], *, listing_id: str | None,
                   seller_id: str | None, sha256: str, photo_hash: int | None, brand_id: int | None) -> Listing:
    """Add (and flush) the listing row of one score JSON (`ScoreResult.to_dict()`) and its serials, in
    the caller's transaction. `brand_id` is the judged brand's (the claimed one, or the best-matching
    one of an unclaimed photo), as the judge knew it (`ScoreResult.brand_id`)."""
    summary = {"risk": score["risk"], "decision": score["decision"]}
    title = (score.get("claimed") or {}).get("title")
    if title is not None:
        summary["title"] = title
    row = Listing(listing_id=listing_id, seller_id=seller_id, brand_id=brand_id, image_sha256=sha256,
                  phash=photo_hash, risk=score["risk"], decision=score["decision"], model_tag=score["model"],
                  result=summary)
    session.add(row)
    session.flush()
    serials = serials_of(score)
    if serials:
        record_serials(session, home, listing_row_id=row.id, brand_id=brand_id, normalized_serials=serials)
    return row
