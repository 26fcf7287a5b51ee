"""Brand routes: `POST /brands` (admin), `GET` and `PATCH /brands/{brand}` (the brand's key, or admin)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from markguard.serving.catalog import Catalog
from markguard.serving.routes.deps import Admin, BrandKey, backend, brand_of, errors
from markguard.serving.routes.schemas import BrandCreatedOut, BrandIn, BrandOut, PolicyIn, PolicyOut

__all__ = ["router"]

router = APIRouter(tags=["brands"])


def catalog(request: Request) -> Catalog:
    return Catalog(backend(request).home)


@router.post("/brands", status_code=201, summary="Create a brand (admin)", response_model=BrandCreatedOut,
             responses=errors(409, 422))
async def create_brand(request: Request, body: BrandIn, _: Admin) -> Any:
    policy = await run_in_threadpool(catalog(request).create_brand, body.name, wordmarks=body.wordmarks)
    return {"name": policy.name, "wordmarks": policy.wordmarks}


@router.get("/brands/{brand}", summary="A brand's policy and counts", response_model=BrandOut,
            responses=errors(404, 422))
async def show_brand(request: Request, brand: str, principal: BrandKey) -> Any:
    name = brand_of(request, principal, brand)
    service = catalog(request)
    return {**dataclasses.asdict(service.policy(name)), "summary": dataclasses.asdict(service.brand(name))}


@router.patch("/brands/{brand}", summary="Change a brand's policy", response_model=PolicyOut,
              responses=errors(404, 422))
async def patch_brand(request: Request, brand: str, body: PolicyIn, principal: BrandKey) -> Any:
    """Thresholds (`review_at` ≤ `takedown_at`, risks in [0, 1]), wordmarks, serial pattern and checksum;
    a field left out is kept."""
    name = brand_of(request, principal, brand)
    changes = body.model_dump(exclude_unset=True)
    return dataclasses.asdict(await run_in_threadpool(catalog(request).update_policy, name, **changes))
