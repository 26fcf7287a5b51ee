"""The one error-to-status mapping: every error the API answers becomes `application/problem+json`.

Each `MarkguardError` (and `ApiError`, one of them) carries its `status` and stable `code`, so the
answer is chosen by class, never by matching message text. FastAPI's own errors (unknown route 404,
wrong method 405, an unparsable body 400, validation 422) and anything unexpected (500, logged, never
shown) answer in the same shape, with the request id.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from markguard.serving.limits import _BodyTooLarge, log, request_id_of
from markguard.serving.problems import BUSY_RETRY_AFTER_S, PROBLEM_JSON, catalog_busy, problem_body
from markguard.serving.redact import public_message
from markguard.vision.errors import MarkguardError

__all__ = ["install_error_handlers", "problem_response"]

_HTTP_DETAIL = {404: "no such route", 405: "method not allowed on this route"}
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def problem_response(request: Request, status: int, detail: str, *, code: str | None = None,
                     headers: dict[str, str] | None = None, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = problem_body(status, detail, code=code, request_id=request_id_of(request.scope), errors=errors)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _expected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MarkguardError)
    headers = getattr(exc, "headers", None)
    if exc.status >= 500 and exc.status != 503:  # the operator's to fix: logged in full, answered without detail
        log.error("server-side error", exc_info=exc,
                  extra={"fields": {"request_id": request_id_of(request.scope), "path": request.url.path}})
        return problem_response(request, exc.status, "internal error", code=exc.code, headers=headers)
    return problem_response(request, exc.status, public_message(str(exc)), code=exc.code, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (the router's own 405 names only the first route's)."""
    routes = request.app.router.routes
    found = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] is Match.FULL for route in routes):
            found.append(method)
    return found


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = _HTTP_DETAIL.get(exc.status_code) or public_message(str(exc.detail))
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers = {k: v for k, v in headers.items() if k.lower() != "allow"}
        headers["Allow"] = ", ".join(allowed_methods(request))
    return problem_response(request, exc.status_code, detail, headers=headers)


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": [public_message(x) if isinstance(x, str) else x for x in e.get("loc") or ()],
               "msg": public_message(str(e.get("msg")))} for e in exc.errors()][:10]
    detail = "; ".join(f"{'.'.join(str(x) for x in e['loc'][1:] or e['loc'])}: {e['msg']}" for e in errors[:3])
    return problem_response(request, 422, public_message(detail or "invalid request"), errors=errors)


async def _too_large(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(request, 413, "request body too large")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc,
              extra={"fields": {"request_id": request_id_of(request.scope), "path": request.url.path}})
    return problem_response(request, 500, "internal error", code="internal")


async def _database(request: Request, exc: Exception) -> JSONResponse:
    """Another writer held the catalog past the wait (a long import, a busy disk): 503, retry shortly."""
    if catalog_busy(exc):
        return problem_response(request, 503, "the catalog is busy with another write; retry shortly", code="busy",
                                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
    return await _unexpected(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MarkguardError, _expected)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(_BodyTooLarge, _too_large)
    app.add_exception_handler(OperationalError, _database)
    app.add_exception_handler(Exception, _unexpected)
