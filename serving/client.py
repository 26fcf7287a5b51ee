"""A small typed client for the markguard HTTP API (`/v1`): sync `Client` and async `AsyncClient`.

    from markguard.serving.client import Client
    with Client("http://127.0.0.1:3000", api_key="mg_...") as mg:
        result = mg.score("photo.jpg", brand="Arla", listing_id="L-1")
        print(result.risk, result.decision)

Answers come back as pydantic models (unknown fields are kept, so a newer server never breaks an older
client); an error answer raises `MarkguardApiError` with its status, stable `code` and request id.
429 and 503 are retried after the server's `Retry-After` (seconds or an HTTP date), at most `retries`
times and never longer than `max_wait` seconds per wait: both mean the request was not carried out, so
retrying any method is safe. Imports httpx and pydantic only, nothing of the server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Client", "AsyncClient", "MarkguardApiError", "Score", "BatchItem", "Reference", "Upload",
           "Deleted", "Brand", "Review", "ReviewPage", "ImageInput"]

API_PREFIX = "/v1"
RETRY_STATUSES = (429, 503)
ImageInput = str | os.PathLike[str] | bytes | tuple[str, bytes]  # a path, raw bytes, or (file name, bytes)
Kind = Literal["genuine", "counterfeit"]


# -- typed answers ------------------------------------------------------------------------------------
class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields a newer server adds are kept, never refused


class NamedScore(_Model):
    name: str | None = None
    score: float | None = None


class Claim(_Model):
    brand: str | None = None
    product: str | None = None
    title: str | None = None


class Match(_Model):
    reference_id: int
    brand: str
    product: str | None = None
    kind: str
    similarity: float
    inliers: int | None = None
    box: list[int] | None = None


class Signal(_Model):
    value: float | None = None
    contribution: float


class OcrLine(_Model):
    text: str
    confidence: float
    box: list[int]


class Ocr(_Model):
    lines: list[OcrLine] = Field(default_factory=list)
    wordmarks: list[dict[str, Any]] = Field(default_factory=list)
    serials: list[dict[str, Any]] = Field(default_factory=list)


class Score(_Model):
    """One photo's score (the server's score JSON)."""

    risk: float
    decision: Literal["pass", "review", "takedown"]
    brand: NamedScore
    product: NamedScore
    claimed: Claim
    matches: list[Match]
    signals: dict[str, Signal]
    ocr: Ocr
    duplicates: list[dict[str, Any]]
    model: str
    provisional: bool = False
    elapsed_ms: float


class Problem(_Model):
    """An error answer (`application/problem+json`)."""

    status: int
    code: str = "error"
    detail: str = ""
    title: str | None = None
    request_id: str | None = None


class BatchItem(_Model):
    """One photo of a batch, in the order sent: its score or the error that refused it alone."""

    index: int
    listing_id: str | None = None
    filename: str | None = None
    result: Score | None = None
    error: Problem | None = None


class Reference(_Model):
    id: int
    product: str | None = None
    kind: str
    sha256: str
    width: int | None = None
    height: int | None = None
    source: str | None = None
    created_at: str


class Upload(_Model):
    brand: str
    added: list[int]
    duplicates: list[str] = Field(default_factory=list)


class Deleted(_Model):
    brand: str
    deleted: list[int]


class Brand(_Model):
    name: str
    review_at: float | None = None
    takedown_at: float | None = None
    wordmarks: list[str] = Field(default_factory=list)
    serial_pattern: str | None = None
    serial_checksum: str | None = None
    genuine_from_reviews: bool = False
    summary: dict[str, Any] | None = None


class Review(_Model):
    review_id: int
    listing_id: str
    label: str
    brand: str | None = None
    reference_id: int | None = None
    removed_reference_id: int | None = None


class ReviewPage(_Model):
    reviews: list[Review]
    next: int | None = None


class MarkguardApiError(Exception):
    """The server answered an error: `status`, its stable `code`, `detail` and the `request_id` to quote."""

    def __init__(self, status: int, code: str, detail: str, request_id: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}" + (f" (request {request_id})" if request_id else ""))
        self.status, self.code, self.detail, self.request_id = status, code, detail, request_id
        self.body = body or {}


# -- requests, built once for both clients ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Call:
    method: str
    path: str
    parse: Callable[[Any], Any]
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None


def _file(field: str, image: ImageInput, i: int) -> tuple[str, tuple[str, bytes, str]]:
    if isinstance(image, tuple):
        name, content = image
    elif isinstance(image, bytes | bytearray):
        name, content = f"{field}{i}", bytes(image)
    else:
        path = Path(image)
        name, content = path.name, path.read_bytes()
    return field, (name, content, "application/octet-stream")


def _fields(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _quote(segment: str) -> str:
    from urllib.parse import quote

    return quote(segment, safe="")


class _Routes:
    """Each route as a `_Call`: what to send and how to read the answer."""

    @staticmethod
    def score(image: ImageInput, *, brand: str | None, product: str | None, listing_id: str | None,
              seller_id: str | None, title: str | None) -> _Call:
        return _Call("POST", "/score", Score.model_validate, files=[_file("image", image, 0)],
                     data=_fields(brand=brand, product=product, listing_id=listing_id, seller_id=seller_id,
                                  title=title))

    @staticmethod
    def score_batch(images: Sequence[ImageInput], *, brand: str | None, product: str | None,
                    listing_ids: Sequence[str] | None, seller_id: str | None) -> _Call:
        if listing_ids is not None and len(listing_ids) != len(images):
            raise ValueError("one listing id per image")
        data = _fields(brand=brand, product=product, seller_id=seller_id)
        if listing_ids is not None:
            data["listing_id"] = list(listing_ids)
        return _Call("POST", "/score_batch", lambda body: [BatchItem.model_validate(x) for x in body["results"]],
                     files=[_file("images", x, i) for i, x in enumerate(images)], data=data)

    @staticmethod
    def upload_references(brand: str, files: Iterable[ImageInput], *, product: str | None, kind: Kind) -> _Call:
        return _Call("POST", f"/brands/{_quote(brand)}/references", Upload.model_validate,
                     files=[_file("files", x, i) for i, x in enumerate(files)],
                     data=_fields(product=product, kind=kind))

    @staticmethod
    def list_references(brand: str, *, limit: int, after: int) -> _Call:
        return _Call("GET", f"/brands/{_quote(brand)}/references",
                     lambda body: [Reference.model_validate(x) for x in body["references"]],
                     params={"limit": limit, "after": after})

    @staticmethod
    def delete_reference(brand: str, reference_id: int) -> _Call:
        return _Call("DELETE", f"/brands/{_quote(brand)}/references/{int(reference_id)}", Deleted.model_validate)

    @staticmethod
    def brand(name: str) -> _Call:
        return _Call("GET", f"/brands/{_quote(name)}", Brand.model_validate)

    @staticmethod
    def create_brand(name: str, *, wordmarks: Sequence[str] | None) -> _Call:
        return _Call("POST", "/brands", Brand.model_validate,
                     json=_fields(name=name, wordmarks=list(wordmarks) if wordmarks is not None else None))

    @staticmethod
    def update_brand(name: str, changes: dict[str, Any]) -> _Call:
        return _Call("PATCH", f"/brands/{_quote(name)}", Brand.model_validate, json=changes)

    @staticmethod
    def review(listing_id: str, label: Kind, note: str) -> _Call:
        return _Call("POST", "/reviews", Review.model_validate,
                     json={"listing_id": listing_id, "label": label, "note": note})

    @staticmethod
    def reviews(*, listing_id: str | None, after: int, limit: int) -> _Call:
        return _Call("GET", "/reviews", ReviewPage.model_validate,
                     params=_fields(listing_id=listing_id, after=after, limit=limit))


def _error(response: httpx.Response) -> MarkguardApiError:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    detail = body.get("detail") if isinstance(body.get("detail"), str) else body.get("error")
    return MarkguardApiError(response.status_code, str(body.get("code") or "error"),
                             str(detail or response.reason_phrase), body.get("request_id")
                             or response.headers.get("x-request-id"), body)


def retry_after(response: httpx.Response, *, default: float = 1.0, now: float | None = None) -> float:
    """Seconds to wait before retrying, from `Retry-After` (delta-seconds or an HTTP date)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return default
    return max(0.0, when - (time.time() if now is None else now))


class _Base:
    def __init__(self, base_url: str, api_key: str, *, retries: int, max_wait: float, prefix: str) -> None:
        self.retries, self.max_wait = retries, max_wait
        self._prefix = prefix.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self._base_url = base_url.rstrip("/")

    def _request_args(self, call: _Call) -> dict[str, Any]:
        return {"method": call.method, "url": self._prefix + call.path, "params": call.params, "json": call.json,
                "data": call.data, "files": call.files}

    def _wait_for(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before the next attempt, or None when the answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
            return None
        return min(self.max_wait, retry_after(response))

    @staticmethod
    def _result(call: _Call, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise _error(response)
        return call.parse(response.json())


class Client(_Base):
    """Synchronous client. `retries`: attempts after a 429/503; `max_wait`: the longest single wait (s)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0, retries: int = 3,
                 max_wait: float = 30.0, prefix: str = API_PREFIX, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(base_url, api_key, retries=retries, max_wait=max_wait, prefix=prefix)
        self._http = httpx.Client(base_url=self._base_url, headers=self._headers, timeout=timeout,
                                  transport=transport)
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, call: _Call) -> Any:
        attempt = 0
        while True:
            response = self._http.request(**self._request_args(call))
            wait = self._wait_for(response, attempt)
            if wait is None:
                return self._result(call, response)
            attempt += 1
            self._sleep(wait)

    def score(self, image: ImageInput, *, brand: str | None = None, product: str | None = None,
              listing_id: str | None = None, seller_id: str | None = None, title: str | None = None) -> Score:
        return self._call(_Routes.score(image, brand=brand, product=product, listing_id=listing_id,
                                        seller_id=seller_id, title=title))

    def score_batch(self, images: Sequence[ImageInput], *, brand: str | None = None, product: str | None = None,
                    listing_ids: Sequence[str] | None = None, seller_id: str | None = None) -> list[BatchItem]:
        return self._call(_Routes.score_batch(images, brand=brand, product=product, listing_ids=listing_ids,
                                              seller_id=seller_id))

    def upload_references(self, brand: str, files: Iterable[ImageInput], *, product: str | None = None,
                          kind: Kind = "genuine") -> Upload:
        return self._call(_Routes.upload_references(brand, files, product=product, kind=kind))

    def list_references(self, brand: str, *, limit: int = 1000, after: int = 0) -> list[Reference]:
        return self._call(_Routes.list_references(brand, limit=limit, after=after))

    def delete_reference(self, brand: str, reference_id: int) -> Deleted:
        return self._call(_Routes.delete_reference(brand, reference_id))

    def brand(self, name: str) -> Brand:
        return self._call(_Routes.brand(name))

    def create_brand(self, name: str, *, wordmarks: Sequence[str] | None = None) -> Brand:
        return self._call(_Routes.create_brand(name, wordmarks=wordmarks))

    def update_brand(self, name: str, **changes: Any) -> Brand:
        return self._call(_Routes.update_brand(name, changes))

    def review(self, listing_id: str, label: Kind, *, note: str = "") -> Review:
        return self._call(_Routes.review(listing_id, label, note))

    def reviews(self, *, listing_id: str | None = None, after: int = 0, limit: int = 100) -> ReviewPage:
        return self._call(_Routes.reviews(listing_id=listing_id, after=after, limit=limit))


class AsyncClient(_Base):
    """The same API for asyncio (`async with AsyncClient(...) as mg: await mg.score(...)`)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 120.0, retries: int = 3,
                 max_wait: float = 30.0, prefix: str = API_PREFIX,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key, retries=retries, max_wait=max_wait, prefix=prefix)
        self._http = httpx.AsyncClient(base_url=self._base_url, headers=self._headers, timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, call: _Call) -> Any:
        attempt = 0
        while True:
            response = await self._http.request(**self._request_args(call))
            wait = self._wait_for(response, attempt)
            if wait is None:
                return self._result(call, response)
            attempt += 1
            await asyncio.sleep(wait)

    async def score(self, image: ImageInput, *, brand: str | None = None, product: str | None = None,
                    listing_id: str | None = None, seller_id: str | None = None, title: str | None = None) -> Score:
        return await self._call(_Routes.score(image, brand=brand, product=product, listing_id=listing_id,
                                              seller_id=seller_id, title=title))

    async def score_batch(self, images: Sequence[ImageInput], *, brand: str | None = None,
                          product: str | None = None, listing_ids: Sequence[str] | None = None,
                          seller_id: str | None = None) -> list[BatchItem]:
        return await self._call(_Routes.score_batch(images, brand=brand, product=product, listing_ids=listing_ids,
                                                    seller_id=seller_id))

    async def upload_references(self, brand: str, files: Iterable[ImageInput], *, product: str | None = None,
                                kind: Kind = "genuine") -> Upload:
        return await self._call(_Routes.upload_references(brand, files, product=product, kind=kind))

    async def list_references(self, brand: str, *, limit: int = 1000, after: int = 0) -> list[Reference]:
        return await self._call(_Routes.list_references(brand, limit=limit, after=after))

    async def delete_reference(self, brand: str, reference_id: int) -> Deleted:
        return await self._call(_Routes.delete_reference(brand, reference_id))

    async def brand(self, name: str) -> Brand:
        return await self._call(_Routes.brand(name))

    async def create_brand(self, name: str, *, wordmarks: Sequence[str] | None = None) -> Brand:
        return await self._call(_Routes.create_brand(name, wordmarks=wordmarks))

    async def update_brand(self, name: str, **changes: Any) -> Brand:
        return await self._call(_Routes.update_brand(name, changes))

    async def review(self, listing_id: str, label: Kind, *, note: str = "") -> Review:
        return await self._call(_Routes.review(listing_id, label, note))

    async def reviews(self, *, listing_id: str | None = None, after: int = 0, limit: int = 100) -> ReviewPage:
        return await self._call(_Routes.reviews(listing_id=listing_id, after=after, limit=limit))
