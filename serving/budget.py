"""Budgets on what uploads cost to decode, per request and per process, charged from headers before
any pixel is decoded.

A photo's decoded size is read from its header (`image_size`), and a zip's inflated size from its
directory, so a request is refused before it allocates, not after: a few tiny PNGs of solid colour
can claim 40 megapixels each.
- Per request (413): scoring keeps every photo of a request decoded until the embedder has seen them
  all, so `CAPS.score_pixels` bounds that memory; a reference upload decodes one image at a time, and
  `CAPS.upload_pixels` and `CAPS.upload_bytes` bound its time and the inflated members it holds.
- Per process (503, retry): the requests in flight in one worker may together hold at most
  `CAPS.process_pixels` decoded pixels (all of a scoring request's, the largest image of an upload or
  of a drawing of kept photos: `evidence.png`, a case export);
  `RequestBudgets`, an ASGI middleware, gives a request's share back when it ends.
"""

from __future__ import annotations

import contextvars
import dataclasses
import threading
from pathlib import Path
from typing import Any

from markguard.serving.caps import CAPS
from markguard.serving.limits import ApiError
from markguard.vision.archive import IMAGE_SUFFIXES, ArchiveError, ArchiveLimits, open_zip
from markguard.vision.decode import MAX_PIXELS, image_size
from markguard.vision.errors import MarkguardError

__all__ = ["OVER_BUDGET", "PixelPool", "RequestBudget", "RequestBudgets", "PROCESS_PIXELS", "score_budget", "upload_budget",
           "draw_budget"]


OVER_BUDGET = "over_budget"  # the code of a request over its budget (413): the request's, never one photo's
UNCAPPED = 2**63 - 1  # a request budget with no cap of its own (only its share of the process's pixels)


class PixelPool:
    """Decoded pixels the requests in flight in this process may hold together."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.capacity:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held = max(0, self.held - n)


PROCESS_PIXELS = PixelPool(CAPS.process_pixels)


@dataclasses.dataclass
class RequestBudget:
    """What one request may decode: pixels (all its images) and bytes (its images and inflated members).
    With a `pool`, it also holds its share of the process's pixels: every pixel (`decoded_at_once`
    False) or its largest image's (True)."""

    max_pixels: int
    max_bytes: int
    pool: PixelPool | None = None
    decoded_at_once: bool = False
    pixels: int = 0  # charged so far
    bytes: int = 0
    pooled: int = 0  # held in the pool

    def charge_bytes(self, n: int, label: str) -> None:
        if self.bytes + n > self.max_bytes:
            raise ApiError(413, f"{label}: over the budget of {self.max_bytes} image bytes per request "
                                f"(zip members inflated); send fewer per request", code=OVER_BUDGET)
        self.bytes += n

    def charge_image(self, data: bytes, label: str, *, bytes_counted: bool = False) -> None:
        """Count an image's decoded pixels (from its header) and, unless already counted, its bytes."""
        if not bytes_counted:
            self.charge_bytes(len(data), label)
        try:
            width, height = image_size(data)
        except MarkguardError:  # unreadable or a bomb: the decoder refuses it from its header, with its reason
            return
        n = width * height
        if n > MAX_PIXELS:
            return  # the same: over the per-image cap, refused before any pixel is allocated
        if self.pixels + n > self.max_pixels:
            raise ApiError(413, f"{label}: over the budget of {self.max_pixels} decoded pixels per request; "
                                f"send fewer or smaller images per request", code=OVER_BUDGET)
        self.pixels += n
        if self.pool is not None:
            more = max(0, n - self.pooled) if self.decoded_at_once else n
            if more and not self.pool.take(more):
                raise ApiError(503, "the server is decoding as many pixels as it may; retry shortly",
                               headers={"Retry-After": "1"}, code="busy")
            self.pooled += more

    def charge_archive(self, path: Path, label: str) -> None:
        """Count a zip's image members' bytes from its directory, before any member is inflated."""
        try:
            with open_zip(path, ArchiveLimits()) as archive:
                total = sum(i.file_size for i in archive.infolist()
                            if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES))
        except ArchiveError:
            return  # the archive reader refuses it with its reason
        self.charge_bytes(total, label)

    def release(self) -> None:
        if self.pool is not None:
            self.pool.give(self.pooled)
        self.pooled = 0


# the budgets of the request being served: set by `RequestBudgets` in the request's own task (each
# HTTP request runs in a task of its own, with its own copy of the context)
_REQUEST: contextvars.ContextVar[dict[str, RequestBudget] | None] = contextvars.ContextVar(
    "markguard_request_budgets", default=None)


def _budget(kind: str, make: Any) -> RequestBudget:
    budgets = _REQUEST.get()
    if budgets is None:  # outside `RequestBudgets`: per-request limits only, nothing pooled
        return make(None)
    if kind not in budgets:
        budgets[kind] = make(PROCESS_PIXELS)
    return budgets[kind]


def score_budget() -> RequestBudget:
    """This request's scoring budget (one for all its photos)."""
    return _budget("score", lambda pool: RequestBudget(max_pixels=CAPS.score_pixels, max_bytes=CAPS.upload_bytes,
                                                       pool=pool))


def upload_budget() -> RequestBudget:
    """This request's reference-upload budget (its images are decoded one at a time)."""
    return _budget("upload", lambda pool: RequestBudget(max_pixels=CAPS.upload_pixels, max_bytes=CAPS.upload_bytes,
                                                        pool=pool, decoded_at_once=True))


def draw_budget() -> RequestBudget:
    """This request's budget for drawing kept photos (`evidence.png`, a case export), decoded one at a time:
    each passed the decoder's caps when it was kept, so only the process's share (its largest) is bounded."""
    return _budget("draw", lambda pool: RequestBudget(max_pixels=UNCAPPED, max_bytes=UNCAPPED, pool=pool,
                                                      decoded_at_once=True))


class RequestBudgets:
    """ASGI middleware: a fresh set of budgets per request, their pooled pixels given back at its end."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        budgets: dict[str, RequestBudget] = {}
        token = _REQUEST.set(budgets)
        try:
            await self.app(scope, receive, send)
        finally:
            _REQUEST.reset(token)
            for budget in budgets.values():
                budget.release()
