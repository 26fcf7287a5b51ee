"""Intelligence routes: `GET /rings`, `GET /rings/{id}`, `POST /rings/{id}/export`, `GET /reports`.

An investigator (or admin) key sees every ring; a brand key sees only rings that sell its brand, with
other brands' names, listings and known-fake references left out, and gets 404 for any other ring.
Reports are for admins, or cut to the brand of a brand key.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from markguard.serving.keys import Principal, Role
from markguard.serving.limits import ApiError
from markguard.serving.routes.deps import MAX_ID, brand_scope, errors, iso_time, require
from markguard.serving.routes.deps import backend as _home
from markguard.serving.routes.schemas import ReportOut, RingDetailOut, RingsOut
from markguard.vision.errors import NotFound

__all__ = ["router"]

router = APIRouter(tags=["intelligence"])
_rings_reader = require(Role.INVESTIGATOR, Role.BRAND)
_reporter = require(Role.BRAND)


@router.get("/rings", summary="Live rings, best first (investigator; brand keys: rings selling their brand)",
            response_model=RingsOut, responses=errors(404, 422))
async def get_rings(request: Request, brand: str | None = None, since: str | None = None,
                    principal: Principal = _rings_reader) -> Any:
    from markguard.serving.brands import get_brand
    from markguard.serving.intelligence.rings import list_rings

    home = _home(request).home
    start = iso_time(since, "since")

    def work() -> Any:
        with home.sessions() as session:
            brand_id = None
            if brand is not None:
                try:
                    brand_id = get_brand(session, brand).id
                except NotFound:
                    raise ApiError(404, f"unknown brand {brand!r}") from None
                if brand_scope(principal) is not None and brand_id != principal.brand_id:
                    raise ApiError(404, f"unknown brand {brand!r}")
            return {"rings": list_rings(session, brand_id=brand_id, since=start, visible_to=brand_scope(principal))}

    return await run_in_threadpool(work)


@router.get("/rings/{ring_id}", summary="One ring: sellers, listings and evidence edges", response_model=RingDetailOut,
            responses=errors(404, 422))
async def get_ring(request: Request, ring_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], principal: Principal = _rings_reader) -> Any:
    from markguard.serving.intelligence.rings import ring_detail

    home = _home(request).home

    def work() -> Any:
        with home.sessions() as session:
            try:
                return ring_detail(session, ring_id, visible_to=brand_scope(principal))
            except NotFound:
                raise ApiError(404, f"no ring {ring_id}") from None

    return await run_in_threadpool(work)


@router.post("/rings/{ring_id}/export", summary="A ring's case bundle as a zip (audited)",
             response_class=Response, responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}, **errors(404, 422)})
async def export_ring(request: Request, ring_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], principal: Principal = _rings_reader) -> Response:
    from markguard.serving.intelligence.cases import export_case

    home = _home(request).home

    def work() -> bytes:
        with tempfile.TemporaryDirectory(prefix="markguard-case-") as tmp:
            out = Path(tmp) / f"ring-{ring_id}"
            try:
                export_case(home, ring_id, out, actor=principal.key_id, role=principal.role.value,
                            visible_to=brand_scope(principal))
            except NotFound:
                raise ApiError(404, f"no ring {ring_id}") from None
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(out.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(out).as_posix())
            return buf.getvalue()

    data = await run_in_threadpool(work)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="ring-{ring_id}.zip"'})


@router.get("/reports", summary="Transparency report figures for a period (admin; brand keys: their brand)",
            response_model=ReportOut, responses=errors(422))
async def get_report(request: Request, start: str = Query(alias="from"), end: str = Query(alias="to"),
                     principal: Principal = _reporter) -> Any:
    from markguard.serving.intelligence.reports import build_report

    home = _home(request).home
    t0, t1 = iso_time(start, "from"), iso_time(end, "to")
    if t0 is None or t1 is None or t1 <= t0:
        raise ApiError(422, "`to` must come after `from`")

    def work() -> Any:
        with home.sessions() as session:
            return build_report(session, start=t0, end=t1, brand_id=brand_scope(principal))

    return await run_in_threadpool(work)
