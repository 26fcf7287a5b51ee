"""Limits and hostile input at the edge: body cap, per-key rate limit, request ids, problem errors and logs.

`GuardMiddleware` wraps the whole service (BentoML's routes and the mounted API): it answers 413 from
`Content-Length` before reading a byte, and again while the body streams in, so an oversized upload is
never buffered; any exception becomes a problem+json 500 naming the request id, never a traceback; and
a plain-text 404 or 405 from a router outside the API (BentoML's own) becomes a problem+json one.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException

from markguard.serving.problems import code_of_status, send_problem
from markguard.serving.settings import get_settings
from markguard.vision.errors import MarkguardError

__all__ = ["ApiError", "RateLimiter", "GuardMiddleware", "JsonFormatter", "configure_logging", "request_id_of"]

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


class _BodyTooLarge(HTTPException):
    """The body grew past the cap while streaming in. An HTTP exception, so a framework reading the body
    (FastAPI's form parsing) passes it on as a 413 instead of calling the body unparsable (400)."""

    def __init__(self) -> None:
        super().__init__(413, "request body too large")


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

        replaced = False  # a plain-text 404/405 answered as a problem instead: its own body is dropped

        async def send_wrapped(message: dict[str, Any]) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                given = dict(message.get("headers", []))
                if message["status"] in (404, 405) and b"json" not in given.get(b"content-type", b""):
                    replaced = True
                    allow = {"allow": given[b"allow"].decode("latin-1")} if b"allow" in given else {}
                    detail = "no such route" if message["status"] == 404 else "method not allowed on this route"
                    await send_problem(send, message["status"], detail, request_id=rid, headers={**extra, **allow})
                    return
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            if not replaced:
                await send(message)

        def done(note: str = "") -> None:
            log.info("request", extra={"fields": {
                "request_id": rid, "method": scope.get("method"), "path": scope.get("path"),
                "status": status["code"], "ms": round((time.perf_counter() - started) * 1000, 1),
                **({"note": note} if note else {})}})

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
            log.exception("unhandled error", extra={"fields": {"request_id": rid, "path": scope.get("path")}})
            if not status["sent"]:
                status["code"] = 500
                await send_problem(send, 500, "internal error", request_id=rid, headers=extra)
        done()
