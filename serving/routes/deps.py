"""What every router shares: the worker's backend, the one auth dependency, and the documented errors.

`require(*roles)` is the only key check of the API: a FastAPI dependency over `serving.keys.authorize`
(bearer key → principal, role check, rate limit). Being a dependency, it answers 401/403/429 before the
request body is validated. The schema shows it as an HTTP bearer scheme; the 401 stays ours
(problem+json with `WWW-Authenticate: Bearer`), never FastAPI's.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from markguard.serving.brands import get_brand
from markguard.serving.engine import ScoringEngine
from markguard.serving.keys import Principal, Role, authorize
from markguard.serving.limits import ApiError, RateLimiter, note_request
from markguard.serving.problems import PROBLEM_JSON, Problem
from markguard.vision.errors import NotFound

__all__ = ["brand_scope", "iso_time", "TIME_YEARS", "Backend", "Embed", "local_embed", "backend", "require", "brand_of", "errors", "MAX_ID", "Admin", "Platform",
           "BrandKey", "Moderator"]

MAX_ID = 2**63 - 1  # catalog ids are signed 64-bit: a larger one is refused (422), never looked up
TIME_YEARS = (1, 9998)  # years a query's time may name, in UTC: a year short of datetime's last, so a week added fits
Embed = Callable[[np.ndarray], Awaitable[np.ndarray]]


@dataclasses.dataclass
class Backend:
    """What one worker holds: the engine (model, OCR, index, catalog) and how it runs forward passes."""

    engine: ScoringEngine
    embed: Embed  # (N, S, S, 3) uint8 → (N, dim) unit vectors
    limiter: RateLimiter

    @property
    def home(self):  # noqa: ANN201
        return self.engine.home


def local_embed(engine: ScoringEngine) -> Embed:
    """One forward pass per call in this process: the naive path (and the in-process tests')."""

    async def embed(crops: np.ndarray) -> np.ndarray:
        return await run_in_threadpool(engine.embed, list(crops))

    return embed


def backend(request: Request) -> Backend:
    b = request.app.state.backend
    if b is None:
        raise ApiError(503, "not ready", headers={"Retry-After": "5"})
    return b


_bearer = HTTPBearer(auto_error=False, scheme_name="apiKey",
                     description="An API key, `Authorization: Bearer mg_<key id>_<secret>`; its role decides the routes.")


def require(*roles: Role) -> Any:
    """The auth dependency: the bearer key's principal, for a key of one of `roles` (admins pass every
    route); 401, 403 or 429 otherwise."""

    def dependency(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> Principal:
        b = backend(request)
        return authorize(b.home, request.headers.get("authorization", ""), b.limiter, *roles)

    return Depends(dependency)


Admin = Annotated[Principal, require(Role.ADMIN)]
Platform = Annotated[Principal, require(Role.PLATFORM)]
BrandKey = Annotated[Principal, require(Role.BRAND)]  # a brand's key (admins pass too)
Moderator = Annotated[Principal, require(Role.MODERATOR)]


def brand_of(request: Request, principal: Principal, name: str) -> str:
    """The brand's canonical name; a brand key asking for another brand gets 404, like an unknown one."""
    with backend(request).home.sessions() as session:
        try:
            row = get_brand(session, name)
        except NotFound:
            raise ApiError(404, f"unknown brand {name!r}") from None
        if principal.role is Role.BRAND and row.id != principal.brand_id:
            raise ApiError(404, f"unknown brand {name!r}")
        note_request(brand=row.name)  # the access-log line names it
        return row.name


_WHY = {400: "Bad request (a URL given instead of a file, an unparsable body)",
        401: "Missing or invalid API key", 403: "The key's role cannot use this route",
        404: "Unknown (or another tenant's) object", 405: "Method not allowed",
        409: "Conflicts with what exists", 413: "Body, image or decoded pixels over a cap",
        415: "Not multipart, or a file in a format not accepted", 422: "Invalid field or unreadable image",
        429: "Rate limit exceeded (see `Retry-After`)", 500: "Internal error (logged with the request id)",
        503: "Not ready or overloaded (see `Retry-After`)"}
_ALWAYS = (400, 401, 403, 413, 429, 500, 503)  # 400: an unparsable body; 413: the body cap, on every route


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of a route: the given statuses and those every route may give."""
    return {s: {"model": Problem, "description": _WHY[s], "content": {PROBLEM_JSON: {}}}
            for s in sorted({*statuses, *_ALWAYS})}


def brand_scope(principal: Principal) -> int | None:
    """The brand id a caller is confined to (a brand key's), or None for roles that see every brand."""
    return principal.brand_id if principal.role is Role.BRAND else None


def iso_time(value: str | None, name: str) -> dt.datetime | None:
    """A query parameter's ISO date or time, in UTC (taken as UTC when it names no zone); 422 when it is
    not one, or falls outside `TIME_YEARS` in UTC (so no later conversion or arithmetic overflows)."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
        parsed = parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        parsed = None
    if parsed is None or not TIME_YEARS[0] <= parsed.year <= TIME_YEARS[1]:
        raise ApiError(422, f"{name}: expected an ISO date or time in the years {TIME_YEARS[0]} to {TIME_YEARS[1]} (UTC)")
    return parsed
