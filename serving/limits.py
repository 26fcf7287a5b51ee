"""Limits and hostile input at the edge: body cap, per-key rate limit, request ids, JSON errors and logs.

`GuardMiddleware` wraps the whole service (BentoML's routes and the mounted API): it answers 413 from
`Content-Length` before reading a byte, and again while the body streams in, so an oversized upload is
never buffered; any exception becomes a JSON 500 naming the request id, never a traceback.
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

from markguard.serving.settings import get_settings

__all__ = ["ApiError", "RateLimiter", "GuardMiddleware", "JsonFormatter", "configure_logging", "request_id_of",
           "note_request"]

MAX_BODY = get_settings().max_body  # bytes per request
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
log = logging.getLogger("markguard.serving")


class ApiError(Exception):
    """An error the client caused (or may retry): answered as `{"error": ..., "request_id": ...}`."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.code = code or _CODES.get(status, "error")


_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
          413: "too_large", 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited", 503: "unavailable"}


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
               "msg": record.getMessage()}
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


class _BodyTooLarge(Exception):
    pass


async def send_json(send: Any, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


class GuardMiddleware:
    """Request id, body cap (413), catch-all JSON 500, `RateLimit-*` headers and the one JSON access-log
    line of each request.

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
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else (_trace_id() or uuid.uuid4().hex)
        scope.setdefault("state", {})["request_id"] = rid
        current: dict[str, Any] = {}
        token = _CURRENT.set(current)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        extra = {"x-request-id": rid}

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                added = [(b"x-request-id", rid.encode())]
                if "quota" in current:
                    limit, remaining, reset, window = current["quota"]
                    added += [(b"ratelimit-limit", str(limit).encode()),
                              (b"ratelimit-remaining", str(remaining).encode()),
                              (b"ratelimit-reset", str(math.ceil(reset)).encode()),
                              (b"ratelimit-policy", f"{limit};w={window}".encode())]
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        def done(note: str = "") -> None:
            fields = {"trace_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                      "status": status["code"], "ms": round((time.perf_counter() - started) * 1000, 1),
                      "key_id": current.get("key_id"), "brand": current.get("brand")}
            if note:
                fields["note"] = note
            log.info("request", extra={"fields": fields})

        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                status["code"] = 413
                await send_json(send, 413, {"error": f"request body larger than {self.max_body} bytes",
                                            "request_id": rid}, extra)
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
                    await send_json(send, 413, {"error": f"request body larger than {self.max_body} bytes",
                                                "request_id": rid}, extra)
            except Exception:  # noqa: BLE001 - the last line of defence: log it, never show it
                log.exception("unhandled error", extra={"fields": {"trace_id": rid, "path": scope.get("path")}})
                if not status["sent"]:
                    status["code"] = 500
                    await send_json(send, 500, {"error": "internal error", "request_id": rid}, extra)
            done()
        finally:
            _CURRENT.reset(token)
