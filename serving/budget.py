"""Per-request budgets on what uploads cost to decode, charged from headers before any pixel is decoded.

A photo's decoded size is read from its header (`image_size`), and a zip's inflated size from its
directory, so a request is refused (413) before it allocates, not after: a few tiny PNGs of solid
colour can claim 40 megapixels each. Scoring keeps every photo of a request decoded until the
embedder has seen them all, so its budget (`CAPS.score_pixels`) bounds that memory; a reference upload
decodes one image at a time, and its larger budget (`CAPS.upload_pixels`, `CAPS.upload_bytes`) bounds
its time and the inflated members it holds.
"""

from __future__ import annotations

import contextvars
import dataclasses
from pathlib import Path

from markguard.serving.caps import CAPS
from markguard.serving.limits import ApiError
from markguard.vision.archive import IMAGE_SUFFIXES, ArchiveError, ArchiveLimits, open_zip
from markguard.vision.decode import MAX_PIXELS, image_size
from markguard.vision.errors import MarkguardError

__all__ = ["RequestBudget", "score_budget", "upload_budget"]


@dataclasses.dataclass
class RequestBudget:
    """What one request may decode: pixels (all its images) and bytes (its images and inflated members)."""

    max_pixels: int
    max_bytes: int
    pixels: int = 0  # charged so far
    bytes: int = 0

    def charge_bytes(self, n: int, label: str) -> None:
        if self.bytes + n > self.max_bytes:
            raise ApiError(413, f"{label}: over the budget of {self.max_bytes} image bytes per request "
                                f"(zip members inflated); send fewer per request")
        self.bytes += n

    def charge_image(self, data: bytes, label: str, *, bytes_counted: bool = False) -> None:
        """Count an image's decoded pixels (from its header) and, unless already counted, its bytes."""
        if not bytes_counted:
            self.charge_bytes(len(data), label)
        try:
            width, height = image_size(data)
        except MarkguardError:  # unreadable or a bomb: the decoder refuses it from its header, with its reason
            return
        if width * height > MAX_PIXELS:
            return  # the same: over the per-image cap, refused before any pixel is allocated
        if self.pixels + width * height > self.max_pixels:
            raise ApiError(413, f"{label}: over the budget of {self.max_pixels} decoded pixels per request; "
                                f"send fewer or smaller images per request")
        self.pixels += width * height

    def charge_archive(self, path: Path, label: str) -> None:
        """Count a zip's image members' bytes from its directory, before any member is inflated."""
        try:
            with open_zip(path, ArchiveLimits()) as archive:
                total = sum(i.file_size for i in archive.infolist()
                            if not i.is_dir() and i.filename.lower().endswith(IMAGE_SUFFIXES))
        except ArchiveError:
            return  # the archive reader refuses it with its reason
        self.charge_bytes(total, label)


def upload_budget() -> RequestBudget:
    return RequestBudget(max_pixels=CAPS.upload_pixels, max_bytes=CAPS.upload_bytes)


_SCORE_BUDGET: contextvars.ContextVar[RequestBudget | None] = contextvars.ContextVar("score_budget", default=None)


def score_budget() -> RequestBudget:
    """This request's scoring budget. Each HTTP request runs in its own task, with its own copy of the
    context, so the budget made by the request's first photo is seen by its later ones and by no other
    request."""
    budget = _SCORE_BUDGET.get()
    if budget is None:
        budget = RequestBudget(max_pixels=CAPS.score_pixels, max_bytes=CAPS.upload_bytes)
        _SCORE_BUDGET.set(budget)
    return budget
