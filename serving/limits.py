"""Limits and hostile input at the edge: body cap, per-key rate limit, request ids, JSON errors and logs.

`GuardMiddleware` wraps the whole service (BentoML's routes and the mounted API): it answers 413 from
`Content-Length` before reading a byte, and again while the body streams in, so an oversized upload is
never buffered; any exception becomes a JSON 500 naming the request id, never a traceback.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from markguard.serving.settings import get_settings

__all__ = ["ApiError", "RateLimiter", "GuardMiddleware", "JsonFormatter", "configure_logging", "request_id_of"]

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
    """Token bucket per key: `rate` requests/s sustained, `burst` at once.

    Per worker process: with N workers a key gets up to N× the rate. That bounds a runaway client per
    machine without a shared store on the request path.
    """

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0 when allowed, else the seconds until a token is free."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate


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
    """Request id, body cap (413), catch-all JSON 500 and one JSON access-log line per request."""

    def __init__(self, app: Any, *, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        extra = {"x-request-id": rid}

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        def done(note: str = "") -> None:
            log.info("request", extra={"fields": {
                "request_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status["code"], "ms": round((time.perf_counter() - started) * 1000, 1),
                **({"note": note} if note else {})}})

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
            log.exception("unhandled error", extra={"fields": {"request_id": rid, "path": scope.get("path")}})
            if not status["sent"]:
                status["code"] = 500
                await send_json(send, 500, {"error": "internal error", "request_id": rid}, extra)
        done()
