"""Errors as `application/problem+json` (RFC 9457): one body shape for every status the service answers.

`{"type", "title", "status", "detail", "code", "request_id"}`: `type` names the problem by its stable
`code` (`urn:markguard:problem:<code>`), `title` is the status's reason phrase, `detail` the one-line,
redacted message (`serving.redact`). A validation error (422) adds `errors`, each with `loc` and `msg`.
"""

from __future__ import annotations

import http
import json
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["PROBLEM_JSON", "Problem", "problem_body", "problem_type", "code_of_status", "send_problem",
           "catalog_busy", "BUSY_RETRY_AFTER_S"]

PROBLEM_JSON = "application/problem+json"
_PREFIX = "urn:markguard:problem:"
_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
          500: "internal", 503: "unavailable"}


BUSY_RETRY_AFTER_S = 2  # the `Retry-After` of a 503 answered because another writer held the catalog
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6  # primary result codes (an extended code keeps them in its low byte)
_PG_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE


def catalog_busy(exc: BaseException) -> bool:
    """Whether a database error only says that another writer held the catalog past the wait (SQLite's
    "database is locked", PostgreSQL's lock_not_available): a 503 worth retrying, not a 500. Decided by
    the driver's error code, never by its message."""
    orig = getattr(exc, "orig", exc)  # SQLAlchemy wraps the driver's error
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return getattr(orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE


def code_of_status(status: int) -> str:
    """The default stable code of a status (an error class may carry a finer one)."""
    return _CODES.get(status, "error")


def problem_type(code: str) -> str:
    return f"{_PREFIX}{code}"


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """An error answer (RFC 9457), served as `application/problem+json`."""

    type: str = Field(description="`urn:markguard:problem:<code>`", examples=["urn:markguard:problem:not_found"])
    title: str = Field(description="the HTTP status's reason phrase")
    status: int
    detail: str = Field(description="what was wrong, one line; never a server path or a value in full")
    code: str = Field(description="stable and machine-readable: decide on this, not on `detail`")
    request_id: str = Field(description="also in the `X-Request-Id` header and the server's log line")
    errors: list[FieldError] | None = Field(None, description="422 only: each invalid field")


def problem_body(status: int, detail: str, *, code: str | None = None, request_id: str = "-",
                 errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    code = code or code_of_status(status)
    try:
        title = http.HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": problem_type(code), "title": title, "status": status, "detail": detail,
                            "code": code, "request_id": request_id}
    if errors is not None:
        body["errors"] = errors
    return body


async def send_problem(send: Any, status: int, detail: str, *, request_id: str, code: str | None = None,
                       headers: dict[str, str] | None = None) -> None:
    """Answer a problem on a raw ASGI `send` (middleware, before or outside any router)."""
    raw = json.dumps(problem_body(status, detail, code=code, request_id=request_id)).encode()
    hdrs = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})
