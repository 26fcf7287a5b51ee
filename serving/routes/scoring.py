"""Scoring routes: `POST /score`, `POST /score_batch`, `POST /embed` (platform keys).

Photos are multipart files (FastAPI `File`), claims are text fields (`Form`), so the schema has the
request bodies and Swagger UI can upload. The server never fetches a URL: a URL where a photo belongs is
refused (400). A batch answers one item per photo, in order: its score, or the error that refused only
that photo (a corrupt one, an unknown claimed brand), each echoing its `listing_id`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from markguard.serving.budget import OVER_BUDGET, score_budget
from markguard.serving.engine import ScoreRequest
from markguard.serving.limits import ApiError, log, note_request, request_id_of
from markguard.serving.metrics import DECISIONS, INDEX_SIZE, LISTINGS_SCORED
from markguard.serving.problems import problem_body
from markguard.serving.redact import public_message
from markguard.serving.routes.deps import Backend, Platform, backend, errors
from markguard.serving.routes.schemas import BatchOut, EmbedOut, ScoreOut
from markguard.vision.decode import MAX_BYTES, decode_image, sniff_format
from markguard.vision.embed.preprocess import resize_square
from markguard.vision.errors import MarkguardError, UnsupportedFormat

__all__ = ["router", "MAX_BATCH_IMAGES", "MAX_TITLE", "multipart"]

MAX_BATCH_IMAGES = 32
MAX_TITLE = 500  # characters of a listing title
MAX_FIELD = 200  # characters of a claimed brand, product, listing or seller id
_URL = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")
_URL_FIELDS = ("url", "image_url", "urls")

router = APIRouter(tags=["scoring"], form_limits={"max_files": MAX_BATCH_IMAGES, "max_fields": 64})


async def multipart(request: Request) -> None:
    """Refuses what is not an upload (415), and URLs where a photo or a file belongs (400). A dependency
    declared after the auth one: it answers after 401/403, before the body is validated (422)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send multipart/form-data with the photo as a file; URLs are refused")
    form = await request.form()  # already parsed by FastAPI for the route's File/Form parameters: cached
    if any(field in form for field in _URL_FIELDS) or any(
            isinstance(v, str) and _URL.match(v) for k in ("image", "images", "files", "file") for v in form.getlist(k)):
        raise ApiError(400, "URL inputs are refused: upload the file's bytes, the server never fetches")
    route = request.scope.get("route")
    known = {f.alias for f in getattr(getattr(route, "dependant", None), "body_params", [])}
    unknown = sorted(set(form.keys()) - known) if known else []
    if unknown:  # a misspelt field would otherwise be ignored without a word
        raise ApiError(422, f"unknown form field {unknown[0][:60]!r}: expected {', '.join(sorted(known))}")


Multipart = Annotated[None, Depends(multipart)]
Text = Annotated[str | None, Form(max_length=MAX_FIELD)]
Texts = Annotated[list[Annotated[str, Form(max_length=MAX_FIELD)]] | None,
                  Form(description="given once (applies to every photo) or once per photo, in order")]


async def read_photo(upload: UploadFile, what: str = "image") -> bytes:
    data = await upload.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ApiError(413, f"{what} larger than {MAX_BYTES} bytes")
    if not data:
        raise ApiError(422, f"{what} is empty")
    try:
        sniff_format(data)
    except UnsupportedFormat as exc:
        raise ApiError(415, f"{what}: {exc}") from None
    score_budget().charge_image(data, what)  # 413 before decoding when the request's photos are too many pixels
    return data


def _claim(values: list[str] | None, i: int) -> str | None:
    if not values:
        return None
    value = values[i] if len(values) > 1 and i < len(values) else values[0]
    return value or None


def _request(data: bytes, *, brand: str | None, product: str | None, seller: str | None, listing: str | None,
             title: str | None) -> ScoreRequest:
    try:
        return ScoreRequest(data, brand=brand or None, product=product or None, seller=seller or None,
                            listing=listing or None, title=title or None)
    except ValueError as exc:
        raise ApiError(422, str(exc)) from None


async def _embed(b: Backend, crops: np.ndarray) -> np.ndarray:
    try:
        return await b.embed(crops)
    except ServiceUnavailable:
        raise ApiError(503, "embedder overloaded, retry later", headers={"Retry-After": "1"}) from None


async def score_photos(b: Backend, requests: list[ScoreRequest | MarkguardError], route: str
                       ) -> list[dict[str, Any] | MarkguardError]:
    """Each request's score JSON, or the error that refused it (an error given in place of a request is
    passed through): plan every photo, one forward pass for all their crops, then judge each."""
    await run_in_threadpool(b.engine.refresh)
    plans: list[Any] = []
    for req in requests:
        if isinstance(req, MarkguardError):
            plans.append(req)
            continue
        try:
            plans.append(await run_in_threadpool(b.engine.plan, req))
        except MarkguardError as exc:
            if exc.status == 503:  # overloaded: the whole request retries
                raise
            plans.append(exc)
    live = [p for p in plans if not isinstance(p, MarkguardError)]
    vectors = np.zeros((0, 0), np.float32)
    if live:
        size = b.engine.model.config.input_size
        crops = await run_in_threadpool(lambda: np.stack([resize_square(c, size) for p in live for c in p.crops]))
        vectors = await _embed(b, crops)
    out: list[dict[str, Any] | MarkguardError] = []
    start = 0
    for plan in plans:
        if isinstance(plan, MarkguardError):
            out.append(plan)
            continue
        try:
            result = await run_in_threadpool(b.engine.finish, plan, vectors[start : start + len(plan.crops)])
        except MarkguardError as exc:
            out.append(exc)
            continue
        finally:
            start += len(plan.crops)
        LISTINGS_SCORED.labels(route=route).inc()
        DECISIONS.labels(decision=result.decision.value).inc()
        out.append(result.to_dict())
    note_request(brand=[r.get("brand") for r in out if isinstance(r, dict)])  # the access-log line names them
    INDEX_SIZE.set(b.engine.index_size)
    return out


@router.post("/score", summary="Score one listing photo", response_model=ScoreOut,
             responses=errors(400, 404, 413, 415, 422))
async def score(
    request: Request,
    _: Platform,
    __: Multipart,
    image: Annotated[UploadFile, File(description="the listing photo: JPEG, PNG or WebP")],
    brand: Text = None,
    product: Text = None,
    listing_id: Text = None,
    seller_id: Text = None,
    title: Annotated[str | None, Form(max_length=MAX_TITLE)] = None,
) -> Any:
    """The score JSON: risk, decision, brand, product, matches, ocr, duplicates, signals. The title is
    stored with the listing and echoed as `claimed.title`; `product` needs `brand`."""
    b = backend(request)
    req = _request(await read_photo(image), brand=brand, product=product, seller=seller_id, listing=listing_id,
                   title=title)
    (result,) = await score_photos(b, [req], "score")
    if isinstance(result, MarkguardError):
        raise result
    return result


@router.post("/score_batch", summary="Score several listing photos, one result or error each",
             response_model=BatchOut, responses=errors(400, 413, 415, 422))
async def score_batch(
    request: Request,
    _: Platform,
    __: Multipart,
    images: Annotated[list[UploadFile], File(description=f"the photos, at most {MAX_BATCH_IMAGES}")],
    brand: Texts = None,
    product: Texts = None,
    listing_id: Texts = None,
    seller_id: Texts = None,
    title: Annotated[list[Annotated[str, Form(max_length=MAX_TITLE)]] | None, Form()] = None,
) -> Any:
    """`images` repeated; each text field given once (applies to all) or once per image, in order.
    `results[i]` is the photo `images[i]`: its `result`, or the `error` (problem) that refused it alone,
    with its `listing_id`. A problem of the whole request (auth, body cap, overload) answers as usual."""
    if len(images) > MAX_BATCH_IMAGES:
        raise ApiError(413, f"at most {MAX_BATCH_IMAGES} images per batch")
    for name, values in (("brand", brand), ("product", product), ("listing_id", listing_id),
                         ("seller_id", seller_id), ("title", title)):
        if values and len(values) not in (1, len(images)):  # which photo would a third of five values claim?
            raise ApiError(422, f"{name}: give it once (for every photo) or once per photo ({len(images)}), "
                                f"not {len(values)} times")
    b = backend(request)
    requests: list[ScoreRequest | MarkguardError] = []
    for i, upload in enumerate(images):
        try:
            data = await read_photo(upload, f"images[{i}]")
            requests.append(_request(data, brand=_claim(brand, i), product=_claim(product, i),
                                     seller=_claim(seller_id, i), listing=_claim(listing_id, i), title=_claim(title, i)))
        except MarkguardError as exc:
            if exc.status == 503 or exc.code == OVER_BUDGET:  # the request's or the process's budget: the whole request
                raise
            requests.append(exc)
    rid = request_id_of(request.scope)
    results = await score_photos(b, requests, "score_batch")
    items = []
    for i, (upload, result) in enumerate(zip(images, results, strict=True)):
        item: dict[str, Any] = {"index": i, "listing_id": _claim(listing_id, i),
                                "filename": (upload.filename or None) and public_message(upload.filename)[-200:]}
        if isinstance(result, MarkguardError):
            if result.status >= 500:
                log.error("server-side error", exc_info=result, extra={"fields": {"request_id": rid, "photo": i}})
            detail = "internal error" if result.status >= 500 else public_message(str(result))
            item["error"] = problem_body(result.status, detail, code=result.code, request_id=rid)
        else:
            item["result"] = result
        items.append(item)
    return {"results": items}


@router.post("/embed", summary="Embed one photo (the whole frame)", response_model=EmbedOut,
             responses=errors(400, 413, 415, 422))
async def embed(
    request: Request,
    _: Platform,
    __: Multipart,
    image: Annotated[UploadFile, File(description="the photo: JPEG, PNG or WebP")],
) -> Any:
    """The model's unit vector for the whole photo (the embedding-only path)."""
    data = await read_photo(image)
    b = backend(request)
    size = b.engine.model.config.input_size
    crop = await run_in_threadpool(lambda: resize_square(decode_image(data), size)[None])  # off the event loop
    vector = await _embed(b, crop)
    return {"model": b.engine.model_tag, "vector": vector[0].astype(np.float64).round(6).tolist()}
