"""Limits and hostile input at the edge: body cap, per-key rate limit, request ids, problem errors and logs.

`GuardMiddleware` wraps the whole service (BentoML's routes and the mounted API): it answers 413 from
`Content-Length` before reading a byte, and again while the body streams in, so an oversized upload is
never buffered; any exception becomes a problem+json 500 naming the request id, never a traceback; and
a plain-text 404 or 405 from a router outside the API (BentoML's own) becomes a problem+json one
(the console's own HTML error pages are left as they are).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import re
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from markguard.serving.problems import code_of_status, send_problem
from markguard.serving.settings import get_settings
from markguard.vision.errors import MarkguardError

__all__ = ["ApiError", "RateLimiter", "GuardMiddleware", "JsonFormatter", "configure_logging", "request_id_of",
           "note_request"]

MAX_BODY = get_settings().max_body  # bytes per request
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = logging.getLogger("markguard.serving")


class ApiError(MarkguardError):
    """An error decided at the HTTP edge (auth, rate limit, a malformed upload), with its status chosen
    where it is raised; answered like every `MarkguardError`, as problem+json with its `code`."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or code_of_status(status)


class RateLimiter:
    """Per-key rate limit: `burst` requests per window of `burst / rate` seconds (at least 1 s), so `rate`
    requests/s sustained; `limits`' sliding-window-counter strategy.

    With `storage_url` (the service: `ratelimit.storage_url_for_home`) the counters are shared by every
    worker process of the home, so N workers still give a key one budget; without, they are this
    process's (tests, one-process apps). Each `take` notes the key's quota on the request being served,
    and `GuardMiddleware` answers it as `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    """

    def __init__(self, *, rate: float, burst: int, storage_url: str | None = None) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import SlidingWindowCounterRateLimiter

        from markguard.serving.ratelimit import SqlStorage

        self.rate, self.burst = rate, burst
        self.window = max(1, round(burst / rate))
        self.item = RateLimitItemPerSecond(burst, self.window)
        self.storage = SqlStorage(storage_url) if storage_url else MemoryStorage()
        self._strategy = SlidingWindowCounterRateLimiter(self.storage)

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until the key may send again."""
        allowed = self._strategy.hit(self.item, key)
        stats = self._strategy.get_window_stats(self.item, key)
        reset = max(0.0, stats.reset_time - time.time())
        note_request(key_id=key, quota=(self.burst, stats.remaining, reset, self.window))
        return 0.0 if allowed else max(reset, 0.001)


# -- the request being served: its id and what the access-log line and the RateLimit-* headers carry ---
_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("markguard_request", default=None)


def note_request(**fields: Any) -> None:
    """Add fields (`key_id`, `brand`, ...) to the access-log line of the request being served; brands
    (names or score results' `{"name": ...}`) are logged as their distinct names. No-op outside a request."""
    current = _CURRENT.get()
    if current is None:
        return
    for name, value in fields.items():
        if name == "brand":  # a name, a result's {"name": ...}, or a list of them
            values = value if isinstance(value, list | tuple | set) else [value]
            names = {str(v.get("name") if isinstance(v, dict) else v) for v in values}
            value = ",".join(sorted(n for n in names if n and n != "None")) or None
        if value is not None:
            current[name] = value


def _trace_id() -> str | None:
    """The OpenTelemetry trace id BentoML opened for this request (32 hex), if any."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - BentoML depends on it
        return None
    trace_id = trace.get_current_span().get_span_context().trace_id
    return f"{trace_id:032x}" if trace_id else None


def request_id_of(scope: dict[str, Any]) -> str:
    return scope.get("state", {}).get("request_id", "-")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "pid": record.process, "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging() -> None:
    if not any(isinstance(h.formatter, JsonFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class _BodyTooLarge(HTTPException):
    """The body grew past the cap while streaming in. An HTTP exception, so a framework reading the body
    (FastAPI's form parsing) passes it on as a 413 instead of calling the body unparsable (400)."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


class GuardMiddleware:
    """Request id, body cap (413), catch-all problem+json 500, `RateLimit-*` headers and the one JSON
    access-log line of each request.

    The request's one id is the client's valid `X-Request-Id`, else the OpenTelemetry trace id BentoML
    opened for it (so the embedder's spans share it), else a random one; it is answered as
    `X-Request-Id` and logged as `trace_id`, with the key id and the brand(s) the request concerned
    (`note_request`). BentoML's own access log is off (service.py), so each request logs exactly one line.
    """

    def __init__(self, app: Any, *, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _CURRENT.get() is not None:  # not HTTP, or inside an outer guard
            await self.app(scope, receive, send)
            return
        current: dict[str, Any] = {}
        token = _CURRENT.set(current)
        try:
            await self._guard(scope, receive, send, current)
        finally:
            _CURRENT.reset(token)

    async def _guard(self, scope: dict[str, Any], receive: Any, send: Any, current: dict[str, Any]) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else (_trace_id() or uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        extra = {"x-request-id": rid}

        replaced = False  # a plain-text 404/405 answered as a problem instead: its own body is dropped

        async def send_wrapped(message: dict[str, Any]) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                given = dict(message.get("headers", []))
                kind = given.get(b"content-type", b"")
                if message["status"] in (404, 405) and (not kind or kind.startswith(b"text/plain")):  # the console's HTML pages stay
                    replaced = True
                    allow = {"allow": given[b"allow"].decode("latin-1")} if b"allow" in given else {}
                    detail = "no such route" if message["status"] == 404 else "method not allowed on this route"
                    await send_problem(send, message["status"], detail, request_id=rid, headers={**extra, **allow})
                    return
                added = [(b"x-request-id", rid.encode())]
                if "quota" in current:
                    limit, remaining, reset, window = current["quota"]
                    added += [(b"ratelimit-limit", str(limit).encode()),
                              (b"ratelimit-remaining", str(remaining).encode()),
                              (b"ratelimit-reset", str(math.ceil(reset)).encode()),
                              (b"ratelimit-policy", f"{limit};w={window}".encode())]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            if not replaced:
                await send(message)

        def done(note: str = "") -> None:
            fields = {"trace_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                      "status": status["code"], "ms": round((time.perf_counter() - started) * 1000, 1),
                      "key_id": current.get("key_id"), "brand": current.get("brand")}
            if note:
                fields["note"] = note
            log.info("request", extra={"fields": fields})

        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            status["code"] = 413
            await send_problem(send, 413, f"request body larger than {self.max_body} bytes", request_id=rid,
                               headers=extra)
            done()
            return
        seen = 0

        async def receive_counted() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, receive_counted, send_wrapped)
        except _BodyTooLarge:
            if not status["sent"]:
                status["code"] = 413
                await send_problem(send, 413, f"request body larger than {self.max_body} bytes", request_id=rid,
                                   headers=extra)
        except Exception:  # noqa: BLE001 - the last line of defence: log it, never show it
            log.exception("unhandled error", extra={"fields": {"trace_id": rid, "path": scope.get("path")}})
            if not status["sent"]:
                status["code"] = 500
                await send_problem(send, 500, "internal error", request_id=rid, headers=extra)
        done()
