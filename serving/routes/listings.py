"""Listing routes: the review queue, one listing, its photo and evidence, reference photos, claims.

Who sees what (the roles of `serving.keys`):
- moderator, investigator, admin: every listing and reference (moderators review them all; investigators
  read every ring, whose evidence is these listings);
- brand: only listings judged as its brand and its own references; any other id answers 404, as if it
  did not exist (the rule of every brand-scoped route);
- platform: none of these routes (403). The marketplace's key scores listings and gets each result in
  the answer; it has no moderator's or brand's reason to browse the archive, its reviews or other
  brands' references, and a scoring key that leaks should not expose them.
Only moderators (and admins) claim listings. Photos are private: `Cache-Control: private, no-store`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from markguard.serving.keys import Principal, Role
from markguard.serving.listings import (
    DEFAULT_PAGE,
    MAX_ID,
    MAX_PAGE,
    ListingFilters,
    claim_listing,
    evidence_png,
    list_listings,
    listing_detail,
    listing_photo,
    reference_photo,
    release_claim,
)
from markguard.serving.routes.deps import backend, brand_scope, errors, iso_time, require

__all__ = ["router"]

router = APIRouter(tags=["listings"])

RowId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="the listing's catalog id (`id` in a page)")]
_PRIVATE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}
_BYTES = {"schema": {"type": "string", "format": "binary"}}
_IMAGE = {200: {"content": {"image/jpeg": _BYTES, "image/png": _BYTES, "image/webp": _BYTES},
                "description": "the stored bytes"}}


_reader = require(Role.MODERATOR, Role.INVESTIGATOR, Role.BRAND)
_moderator = require(Role.MODERATOR)


async def _call(work: Any) -> Any:
    """Run catalog work off the event loop; its expected errors answer by their class (404, 409, 422)."""
    return await run_in_threadpool(work)


@router.get("/listings", summary="Scored listings, newest or riskiest first, filtered; keyset pages",
             responses=errors(404, 422))
async def get_listings(
    request: Request,
    decision: Literal["pass", "review", "takedown"] | None = None,
    brand: Annotated[str | None, Query(max_length=200)] = None,
    min_risk: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_risk: Annotated[float | None, Query(ge=0, le=1)] = None,
    reviewed: bool | None = None,
    seller: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[str | None, Query(max_length=40, description="scored at or after (ISO)")] = None,
    until: Annotated[str | None, Query(max_length=40, description="scored before (ISO)")] = None,
    unclaimed: Annotated[bool, Query(description="skip listings other moderators hold")] = False,
    order: Literal["newest", "riskiest"] = "newest",
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    principal: Principal = _reader,
) -> dict[str, Any]:
    """Each listing: its catalog `id`, `listing_id`, seller, brand, risk, decision, title, when it was
    scored, whether it was reviewed (and the last label), and a running claim. Pass `next` back as
    `cursor` with the same filters and order for the following page; `next` is null on the last."""
    filters = ListingFilters(decision=decision, brand=brand, min_risk=min_risk, max_risk=max_risk,
                             reviewed=reviewed, seller=seller, since=iso_time(since, "since"),
                             until=iso_time(until, "until"), unclaimed_for=principal.key_id if unclaimed else None)
    home = backend(request).home
    page = await _call(lambda: list_listings(home, filters, order=order, cursor=cursor, limit=limit,
                                             visible_to=brand_scope(principal)))
    return dataclasses.asdict(page)


@router.get("/listings/{listing}", summary="One listing: its stored result, reviews and earlier listings",
             responses=errors(404, 422))
async def get_listing(request: Request, listing: RowId, principal: Principal = _reader) -> dict[str, Any]:
    """`result` is the score JSON as stored when it was scored (with each serial's OCR line and box);
    `earlier` names earlier listings of the same photo or of a serial it showed."""
    home = backend(request).home
    return await _call(lambda: listing_detail(home, listing, visible_to=brand_scope(principal)))


@router.get("/listings/{listing}/image", summary="A listing's photo, as uploaded", responses={**_IMAGE, **errors(404, 422)},
            response_class=Response)
async def get_listing_image(request: Request, listing: RowId, principal: Principal = _reader) -> Response:
    home = backend(request).home
    data, media = await _call(lambda: listing_photo(home, listing, visible_to=brand_scope(principal)))
    return Response(data, media_type=media, headers=_PRIVATE)


@router.get("/listings/{listing}/evidence.png", summary="A listing's photo with its evidence drawn",
            responses={200: {"content": {"image/png": _BYTES}, "description": "PNG"}, **errors(404, 422)},
            response_class=Response)
async def get_listing_evidence(request: Request, listing: RowId, principal: Principal = _reader) -> Response:
    """Matched regions (green: a genuine reference; red: a known fake), OCR lines (blue) and serial
    reads (orange; magenta when invalid or unregistered), each labelled."""
    home = backend(request).home
    data = await _call(lambda: evidence_png(home, listing, visible_to=brand_scope(principal)))
    return Response(data, media_type="image/png", headers=_PRIVATE)


@router.get("/references/{reference}/image", summary="A reference's enrolled image", responses={**_IMAGE, **errors(404, 422)},
            response_class=Response)
async def get_reference_image(request: Request, reference: Annotated[int, PathParam(ge=1, le=MAX_ID)],
                              principal: Principal = _reader) -> Response:
    home = backend(request).home
    data, media = await _call(lambda: reference_photo(home, reference, visible_to=brand_scope(principal)))
    return Response(data, media_type=media, headers=_PRIVATE)


@router.post("/listings/{listing}/claim", summary="Claim a listing to review it (moderator)",
             responses=errors(404, 409, 422))
async def claim(request: Request, listing: RowId, principal: Principal = _moderator) -> dict[str, Any]:
    """Holds the listing for this key for a while (claiming again renews it); 409 while another
    moderator's claim runs. Queue pages with `unclaimed=true` skip listings others hold."""
    home = backend(request).home
    return await _call(lambda: claim_listing(home, listing, key_id=principal.key_id))


@router.delete("/listings/{listing}/claim", status_code=204, response_class=Response,
               summary="Release a claim (moderator: their own; admin: anyone's)",
               responses=errors(404, 409, 422))
async def release(request: Request, listing: RowId, principal: Principal = _moderator) -> Response:
    home = backend(request).home
    holder = None if principal.role is Role.ADMIN else principal.key_id
    await _call(lambda: release_claim(home, listing, key_id=holder))
    return Response(status_code=204)
