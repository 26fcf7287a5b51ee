"""`POST /keys` (admin): create an API key, shown once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from markguard.serving.catalog import Catalog
from markguard.serving.routes.deps import Admin, backend, errors
from markguard.serving.routes.schemas import KeyIn, KeyOut

__all__ = ["router"]

router = APIRouter(tags=["keys"])


@router.post("/keys", status_code=201, summary="Create an API key (admin); shown once", response_model=KeyOut,
             responses=errors(404, 422))
async def new_key(request: Request, body: KeyIn, _: Admin) -> Any:
    key, who = await run_in_threadpool(Catalog(backend(request).home).create_key, role=body.role, brand=body.brand,
                                       label=body.label)
    return {"key": key, "key_id": who.key_id, "role": who.role.value, "brand": who.brand_name}
