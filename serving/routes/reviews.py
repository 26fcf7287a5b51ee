"""Review routes: `POST /reviews` (moderator) labels a scored listing; `GET /reviews` lists the labels."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from markguard.serving.keys import Principal, Role
from markguard.serving.reviews import MAX_REVIEWS_PAGE, list_reviews, record_review
from markguard.serving.routes.deps import Moderator, backend, errors, require
from markguard.serving.routes.schemas import ReviewIn, ReviewOut, ReviewsOut

__all__ = ["router"]

router = APIRouter(tags=["reviews"])
_readers = require(Role.MODERATOR, Role.BRAND)


@router.post("/reviews", status_code=201, summary="Label a scored listing (moderator)", response_model=ReviewOut,
             responses=errors(404, 409, 422))
async def review(request: Request, body: ReviewIn, principal: Moderator) -> Any:
    """Kept as labelled data for retraining. `counterfeit` makes the listing's photo a known-fake reference
    of its brand; a later `genuine` review of the same listing removes it (and, where the brand allows,
    adds the photo as a genuine reference). The next score of the photo sees the change."""
    b = backend(request)
    report = await run_in_threadpool(
        record_review, b.home, b.engine.artifact, b.engine.model, listing_id=body.listing_id,
        label=body.label, reviewer_key_id=principal.key_id, note=body.note)
    return dataclasses.asdict(report)


@router.get("/reviews", summary="List reviews, oldest first (moderator; a brand key: its brand's)",
            response_model=ReviewsOut, responses=errors(422))
async def reviews(request: Request, principal: Annotated[Principal, _readers], listing_id: Annotated[str | None, Query(max_length=200)] = None,
                  after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                  limit: Annotated[int, Query(ge=1, le=MAX_REVIEWS_PAGE)] = 100) -> Any:
    """Every review is kept: who (key id), when, the label, the note, the reference it added and the one
    it removed. Keyset pages: pass the last `id` seen as `after`."""
    brand_id = principal.brand_id if principal.role is Role.BRAND else None
    found = await run_in_threadpool(list_reviews, backend(request).home, listing_id=listing_id, brand_id=brand_id,
                                    after=after, limit=limit)
    return {"reviews": [dataclasses.asdict(r) for r in found],
            "next": found[-1].review_id if len(found) == limit else None}
