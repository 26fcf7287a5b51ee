"""Brand routes: `POST /brands` (admin), `GET` and `PATCH /brands/{brand}` (the brand's key, or admin)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from markguard.serving.brands import add_brand, check_serial_pattern, check_wordmarks, get_brand, summarize
from markguard.serving.limits import ApiError
from markguard.serving.routes.deps import Admin, BrandKey, backend, brand_of, errors
from markguard.serving.routes.schemas import BrandCreatedOut, BrandIn, BrandOut, PolicyIn, PolicyOut
from markguard.vision.errors import MarkguardError
from markguard.vision.text import CHECKSUMS

__all__ = ["router", "policy_of"]

router = APIRouter(tags=["brands"])


def policy_of(row: Any) -> dict[str, Any]:
    return {"name": row.name, "review_at": row.review_at, "takedown_at": row.takedown_at,
            "wordmarks": row.wordmarks, "serial_pattern": row.serial_pattern,
            "serial_checksum": row.serial_checksum, "genuine_from_reviews": bool(row.genuine_from_reviews)}


@router.post("/brands", status_code=201, summary="Create a brand (admin)", response_model=BrandCreatedOut,
             responses=errors(409, 422))
async def create_brand(request: Request, body: BrandIn, _: Admin) -> Any:
    home = backend(request).home

    def work() -> dict[str, Any]:
        with home.sessions.begin() as session:
            row = add_brand(session, body.name, wordmarks=body.wordmarks)
            return {"name": row.name, "wordmarks": row.wordmarks}

    return await run_in_threadpool(work)


@router.get("/brands/{brand}", summary="A brand's policy and counts", response_model=BrandOut,
            responses=errors(404, 422))
async def show_brand(request: Request, brand: str, principal: BrandKey) -> Any:
    name = brand_of(request, principal, brand)
    with backend(request).home.sessions() as session:
        row = get_brand(session, name)
        return {**policy_of(row), "summary": dataclasses.asdict(summarize(session, row))}


@router.patch("/brands/{brand}", summary="Change a brand's policy", response_model=PolicyOut,
              responses=errors(404, 422))
async def patch_brand(request: Request, brand: str, body: PolicyIn, principal: BrandKey) -> Any:
    """Thresholds (`review_at` ≤ `takedown_at`, risks in [0, 1]), wordmarks, serial pattern and checksum."""
    name = brand_of(request, principal, brand)
    changes = body.model_dump(exclude_unset=True)
    if "serial_checksum" in changes and changes["serial_checksum"] not in (*CHECKSUMS, "none", None):
        raise ApiError(422, f"serial_checksum must be one of {sorted([*CHECKSUMS, 'none'])}")
    try:
        if "serial_pattern" in changes:
            changes["serial_pattern"] = check_serial_pattern(changes["serial_pattern"])
        if "wordmarks" in changes:
            changes["wordmarks"] = check_wordmarks(changes["wordmarks"] or [])
    except MarkguardError as exc:
        raise ApiError(422, str(exc), code=exc.code) from None
    with backend(request).home.sessions.begin() as session:
        row = get_brand(session, name)
        for key, value in changes.items():
            if key == "genuine_from_reviews" and value is None:
                continue
            setattr(row, key, "none" if key == "serial_checksum" and value is None else value)
        if row.review_at is not None and row.takedown_at is not None and row.review_at > row.takedown_at:
            raise ApiError(422, "review_at must not exceed takedown_at")
        return policy_of(row)
