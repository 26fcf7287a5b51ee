"""The HTTP API (FastAPI, mounted into the BentoML service): scoring and management routes.

Scoring runs the engine's three steps; the middle one, the forward pass, goes through `Backend.embed`,
which in the service is the batchable BentoML API of `Embedder` (adaptive batching across requests).
The key in `Authorization: Bearer` decides the role and the tenant: a brand key sees only its own brand,
and another brand's objects answer 404, as if they did not exist.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from bentoml.exceptions import ServiceUnavailable
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from markguard.serving.brands import add_brand, check_serial_pattern, check_wordmarks, get_brand, summarize
from markguard.serving.budget import RequestBudgets, score_budget, upload_budget
from markguard.serving.caps import CAPS
from markguard.serving.console import build_console
from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.enroll import InputImage, collect_inputs, enroll, public_label
from markguard.serving.intelligence.api import router as intelligence_router
from markguard.serving.keys import Principal, Role, authorize, create_key
from markguard.serving.limits import ApiError, RateLimiter, log, request_id_of
from markguard.serving.limits import _BodyTooLarge as BodyTooLarge
from markguard.serving.metrics import DECISIONS, INDEX_SIZE, LISTINGS_SCORED, install_metrics
from markguard.serving.redact import public_message
from markguard.serving.references import delete_references
from markguard.serving.reviews import MAX_REVIEWS_PAGE, list_reviews, record_review
from markguard.serving.routes.listings import router as listings_router
from markguard.serving.scan.routes import scans_router
from markguard.serving.state.schema import Reference, ReferenceKind
from markguard.vision.archive import is_zip
from markguard.vision.decode import MAX_BYTES, decode_image, sniff_format
from markguard.vision.embed.preprocess import resize_square
from markguard.vision.errors import InvalidImage, MarkguardError, NotFound, UnsupportedFormat
from markguard.vision.text import CHECKSUMS

__all__ = ["Backend", "build_app"]

MAX_BATCH_IMAGES = 32
MAX_TITLE = 500  # characters of a listing title
MAX_ID = 2**63 - 1  # catalog ids are signed 64-bit: a larger one is refused (422), never looked up
_URL = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")

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


# -- request bodies (documented in the OpenAPI schema) ---------------------------------------------
Wordmark = Annotated[str, Field(min_length=1, max_length=CAPS.wordmark_chars)]


class BrandIn(BaseModel):
    name: str = Field(min_length=1, max_length=CAPS.brand_name_chars)
    wordmarks: list[Wordmark] | None = Field(None, min_length=1, max_length=CAPS.wordmarks)


class PolicyIn(BaseModel):
    review_at: float | None = Field(None, ge=0, le=1)
    takedown_at: float | None = Field(None, ge=0, le=1)
    wordmarks: list[Wordmark] | None = Field(None, min_length=1, max_length=CAPS.wordmarks)
    serial_pattern: str | None = Field(None, max_length=CAPS.serial_pattern_chars,
                                       description="full-match pattern, RE2 syntax (no backreferences or look-arounds)")
    serial_checksum: str | None = None
    genuine_from_reviews: bool | None = None  # a listing reviewed genuine becomes a genuine reference


class ReviewIn(BaseModel):
    listing_id: str = Field(max_length=200)
    label: ReferenceKind
    note: str = Field("", max_length=2000)


class EmbedOut(BaseModel):
    model: str
    vector: list[float]  # unit length, the model's embedding dimension


class KeyIn(BaseModel):
    role: Role
    brand: str | None = None
    label: str = Field("", max_length=200)


def build_app(backend: Backend | None = None) -> FastAPI:
    """The API; `backend` may be attached later as `app.state.backend` (the service does, per worker)."""
    app = FastAPI(title="markguard", version="1", docs_url=None, redoc_url=None,
                  description="Scoring and management API. Every route needs `Authorization: Bearer <key>`.")
    app.state.backend = backend
    install_metrics(app)  # `/metrics`, and request counts by route template
    app.add_middleware(RequestBudgets)  # decoded pixels per request and per process (serving.budget)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": public_message(exc.message), "code": exc.code,
                             "request_id": request_id_of(request.scope)}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(MarkguardError)
    async def _expected(request: Request, exc: MarkguardError) -> JSONResponse:
        """Every expected error answers by its class: its `status` and stable `code` (vision.errors)."""
        rid = request_id_of(request.scope)
        if exc.status >= 500:  # the operator's to fix: logged in full, answered without detail
            log.error("server-side error", exc_info=exc, extra={"fields": {"request_id": rid, "path": request.url.path}})
            return JSONResponse({"error": "internal error", "code": exc.code, "request_id": rid}, status_code=exc.status)
        return JSONResponse({"error": public_message(str(exc)), "code": exc.code, "request_id": rid},
                            status_code=exc.status)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return JSONResponse({"error": "request body too large", "request_id": request_id_of(request.scope)},
                            status_code=413)

    @app.exception_handler(422)
    async def _invalid(request: Request, exc: Exception) -> JSONResponse:
        errors = getattr(exc, "errors", lambda: [])()
        detail = [{"loc": [public_message(str(x)) if isinstance(x, str) else x for x in e.get("loc") or ()],
                   "msg": public_message(str(e.get("msg")))} for e in errors][:10]
        return JSONResponse({"error": "invalid request", "detail": detail,
                             "request_id": request_id_of(request.scope)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = request_id_of(request.scope)
        log.error("unhandled error", exc_info=exc, extra={"fields": {"request_id": rid, "path": request.url.path}})
        return JSONResponse({"error": "internal error", "request_id": rid}, status_code=500)

    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, _invalid)
    app.include_router(intelligence_router)
    app.include_router(listings_router)
    app.mount("/console", build_console(app))  # the web console (markguard.serving.console)

    def be(request: Request) -> Backend:
        b = request.app.state.backend
        if b is None:
            raise ApiError(503, "not ready")
        return b

    def auth(request: Request, *roles: Role) -> Principal:
        b = be(request)
        return authorize(b.home, request.headers.get("authorization", ""), b.limiter, *roles)

    def require(*roles: Role) -> Any:
        """Auth as a dependency, so it answers before the body is validated (401/403 before 422)."""

        def dependency(request: Request) -> Principal:
            return auth(request, *roles)

        return Depends(dependency)

    as_admin, as_brand, as_moderator = require(Role.ADMIN), require(Role.BRAND), require(Role.MODERATOR)
    app.include_router(scans_router(auth, lambda request: be(request).home))

    def brand_of(request: Request, principal: Principal, name: str) -> str:
        """The brand's canonical name; a brand key asking for another brand gets 404, like an unknown one."""
        with be(request).home.sessions() as session:
            try:
                row = get_brand(session, name)
            except NotFound:
                raise ApiError(404, f"unknown brand {name!r}") from None
            if principal.role is Role.BRAND and row.id != principal.brand_id:
                raise ApiError(404, f"unknown brand {name!r}")
            return row.name

    # -- scoring ------------------------------------------------------------------------------------
    async def photo(value: Any, what: str = "image") -> bytes:
        if value is None:
            raise ApiError(422, f"missing {what}: upload the photo as a multipart file")
        if isinstance(value, str):
            if _URL.match(value):
                raise ApiError(400, "URL inputs are refused: upload the photo's bytes, the server never fetches")
            raise ApiError(422, f"{what} must be an uploaded file")
        data = await value.read(MAX_BYTES + 1)
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

    async def form_of(request: Request) -> Any:
        kind = request.headers.get("content-type", "")
        if not kind.startswith("multipart/form-data"):
            raise ApiError(415, "send multipart/form-data with the photo as a file; URLs are refused")
        form = await request.form(max_files=MAX_BATCH_IMAGES, max_fields=64)
        for field in ("url", "image_url", "urls"):
            if field in form:
                raise ApiError(400, "URL inputs are refused: upload the photo's bytes, the server never fetches")
        return form

    async def score_photos(b: Backend, requests: list[ScoreRequest], route: str) -> list[dict[str, Any]]:
        await run_in_threadpool(b.engine.refresh)
        plans = []
        for req in requests:
            plans.append(await run_in_threadpool(b.engine.plan, req))  # errors answer by class (see _expected)
        size = b.engine.model.config.input_size
        crops = await run_in_threadpool(lambda: np.stack([resize_square(c, size) for p in plans for c in p.crops]))
        vectors = await embed_or_503(b, crops)
        out, start = [], 0
        for plan in plans:
            result = await run_in_threadpool(b.engine.finish, plan, vectors[start : start + len(plan.crops)])
            start += len(plan.crops)
            LISTINGS_SCORED.labels(route=route).inc()
            DECISIONS.labels(decision=result.decision.value).inc()
            out.append(result.to_dict())
        INDEX_SIZE.set(b.engine.index_size)
        return out

    async def embed_or_503(b: Backend, crops: np.ndarray) -> np.ndarray:
        try:
            return await b.embed(crops)
        except ServiceUnavailable:
            raise ApiError(503, "embedder overloaded, retry later", headers={"Retry-After": "1"}) from None

    def claim(form: Any, i: int, name: str, *, limit: int = 200) -> str | None:
        values = form.getlist(name)
        value = values[i] if len(values) > 1 and i < len(values) else (values[0] if values else None)
        if value is not None and not isinstance(value, str):
            raise ApiError(422, f"{name} must be a text field")
        if value is not None and len(value) > limit:
            raise ApiError(422, f"{name} longer than {limit} characters")
        return value or None

    def request_of(data: bytes, form: Any, i: int) -> ScoreRequest:
        try:
            return ScoreRequest(data, brand=claim(form, i, "brand"), product=claim(form, i, "product"),
                                seller=claim(form, i, "seller_id"), listing=claim(form, i, "listing_id"),
                                title=claim(form, i, "title", limit=MAX_TITLE))
        except ValueError as exc:
            raise ApiError(422, str(exc)) from None

    @app.post("/score", tags=["scoring"], summary="Score one listing photo")
    async def score(request: Request) -> dict[str, Any]:
        """Multipart: `image` (file), and text fields `brand`, `product`, `listing_id`, `seller_id`, `title`.
        Returns the score JSON (risk, decision, brand, product, matches, ocr, duplicates, signals); the title
        is stored with the listing and echoed as `claimed.title`."""
        auth(request, Role.PLATFORM)
        form = await form_of(request)
        data = await photo(form.get("image"))
        return (await score_photos(be(request), [request_of(data, form, 0)], "score"))[0]

    @app.post("/score_batch", tags=["scoring"], summary="Score several listing photos")
    async def score_batch(request: Request) -> dict[str, Any]:
        """Multipart: `images` (files, repeated, at most 32); `brand`, `product`, `listing_id`, `seller_id`,
        `title` each given once (applies to all) or once per image, in order."""
        auth(request, Role.PLATFORM)
        form = await form_of(request)
        files = form.getlist("images")
        if not files:
            raise ApiError(422, "missing images: upload the photos as multipart files named `images`")
        datas = [await photo(f, f"images[{i}]") for i, f in enumerate(files)]
        return {"results": await score_photos(be(request), [request_of(d, form, i) for i, d in enumerate(datas)],
                                              "score_batch")}

    @app.post("/embed", tags=["scoring"], summary="Embed one photo (the whole frame)",
              response_model=EmbedOut)
    async def embed(request: Request) -> JSONResponse:
        """Multipart `image`; returns the model's unit vector for the whole photo (the embedding-only path)."""
        auth(request, Role.PLATFORM)
        form = await form_of(request)
        data = await photo(form.get("image"))
        b = be(request)
        size = b.engine.model.config.input_size
        crop = await run_in_threadpool(lambda: resize_square(decode_image(data), size)[None])  # off the event loop
        vector = await embed_or_503(b, crop)
        return JSONResponse({"model": b.engine.model_tag, "vector": vector[0].astype(np.float64).round(6).tolist()})

    # -- brands -------------------------------------------------------------------------------------
    @app.post("/brands", tags=["brands"], status_code=201, summary="Create a brand (admin)")
    async def create_brand(request: Request, body: BrandIn, _: Principal = as_admin) -> dict[str, Any]:
        home = be(request).home

        def work() -> dict[str, Any]:
            with home.sessions.begin() as session:
                row = add_brand(session, body.name, wordmarks=body.wordmarks)
                return {"name": row.name, "wordmarks": row.wordmarks}

        return await run_in_threadpool(work)

    @app.get("/brands/{brand}", tags=["brands"], summary="A brand's policy and counts")
    async def show_brand(request: Request, brand: str) -> dict[str, Any]:
        principal = auth(request, Role.BRAND)
        name = brand_of(request, principal, brand)
        with be(request).home.sessions() as session:
            row = get_brand(session, name)
            return {**_policy(row), "summary": dataclasses.asdict(summarize(session, row))}

    @app.patch("/brands/{brand}", tags=["brands"], summary="Change a brand's policy")
    async def patch_brand(request: Request, brand: str, body: PolicyIn,
                          principal: Principal = as_brand) -> dict[str, Any]:
        """Thresholds (`review_at` ≤ `takedown_at`, risks in [0, 1]), wordmarks, serial pattern and checksum."""
        name = brand_of(request, principal, brand)
        changes = body.model_dump(exclude_unset=True)
        if "serial_checksum" in changes and changes["serial_checksum"] not in (*CHECKSUMS, "none", None):
            raise ApiError(422, f"serial_checksum must be one of {sorted([*CHECKSUMS, 'none'])}")
        try:
            if "serial_pattern" in changes:
                changes["serial_pattern"] = check_serial_pattern(changes["serial_pattern"])
            if "wordmarks" in changes:
                changes["wordmarks"] = check_wordmarks(changes["wordmarks"] or [])
        except MarkguardError as exc:
            raise ApiError(422, str(exc)) from None
        with be(request).home.sessions.begin() as session:
            row = get_brand(session, name)
            for key, value in changes.items():
                if key == "genuine_from_reviews" and value is None:
                    continue
                setattr(row, key, "none" if key == "serial_checksum" and value is None else value)
            if row.review_at is not None and row.takedown_at is not None and row.review_at > row.takedown_at:
                raise ApiError(422, "review_at must not exceed takedown_at")
            return _policy(row)

    # -- references ---------------------------------------------------------------------------------
    @app.get("/brands/{brand}/references", tags=["references"], summary="List a brand's references")
    async def list_references(request: Request, brand: str, limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                              after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0) -> dict[str, Any]:
        principal = auth(request, Role.BRAND)
        name = brand_of(request, principal, brand)
        with be(request).home.sessions() as session:
            row = get_brand(session, name)
            refs = session.scalars(select(Reference).where(Reference.brand_id == row.id, Reference.id > after)
                                   .order_by(Reference.id).limit(max(1, min(limit, 1000)))).all()
            return {"brand": name, "references": [
                {"id": r.id, "product": r.product.name if r.product else None, "kind": r.kind.value,
                 "sha256": r.sha256, "width": r.width, "height": r.height, "source": public_label(r.source),
                 "created_at": r.created_at.isoformat()} for r in refs]}

    @app.post("/brands/{brand}/references", tags=["references"], status_code=201,
              summary="Upload reference images (files or zip archives)")
    async def upload_references(request: Request, brand: str) -> dict[str, Any]:
        """Multipart: `files` (images or zip archives, repeated), optional `product`, `kind` (genuine|counterfeit).
        All-or-nothing: one unreadable image refuses the upload."""
        principal = auth(request, Role.BRAND)
        name = brand_of(request, principal, brand)
        form = await form_of(request)
        kind_text = form.get("kind") or "genuine"
        if kind_text not in ("genuine", "counterfeit"):
            raise ApiError(422, "kind must be genuine or counterfeit")
        product = form.get("product") or None
        files = form.getlist("files")
        if not files or any(isinstance(f, str) for f in files):
            if any(isinstance(f, str) and _URL.match(f) for f in files):
                raise ApiError(400, "URL inputs are refused: upload the files, the server never fetches")
            raise ApiError(422, "upload one or more files named `files`")
        inputs = await _inputs(files)
        b = be(request)
        report = await run_in_threadpool(
            enroll, b.home, b.engine.artifact, b.engine.model, brand=name, inputs=inputs, product=product,
            kind=ReferenceKind(kind_text))
        return {"brand": name, "added": report.added, "duplicates": report.duplicates}

    @app.delete("/brands/{brand}/references/{reference_id}", tags=["references"], summary="Delete a reference")
    async def delete_reference(request: Request, brand: str,
                               reference_id: Annotated[int, PathParam(ge=1, le=MAX_ID)]) -> dict[str, Any]:
        principal = auth(request, Role.BRAND)
        name = brand_of(request, principal, brand)
        try:
            deleted = await run_in_threadpool(delete_references, be(request).home, brand=name, ids=[reference_id])
        except NotFound:
            raise ApiError(404, f"brand {name!r} has no reference {reference_id}") from None
        return {"brand": name, "deleted": deleted}

    @app.post("/brands/{brand}/serials", tags=["serials"], summary="Import genuine serials (CSV or text file)")
    async def import_brand_serials(request: Request, brand: str) -> dict[str, Any]:
        """Multipart `file`: one serial a line, or a CSV with a `serial` column. Stored as keyed hashes."""
        from markguard.serving.serials import import_serials

        principal = auth(request, Role.BRAND)
        name = brand_of(request, principal, brand)
        form = await form_of(request)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "upload the serials as a file named `file`")
        suffix = Path(upload.filename or "").suffix.lower()
        with tempfile.NamedTemporaryFile(suffix=suffix if suffix in (".txt", ".tsv") else ".csv") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
            fh.flush()
            report = await run_in_threadpool(import_serials, be(request).home, name, fh.name, progress=False)
        return dataclasses.asdict(report)

    # -- reviews and keys ---------------------------------------------------------------------------
    @app.post("/reviews", tags=["reviews"], status_code=201, summary="Label a scored listing (moderator)")
    async def review(request: Request, body: ReviewIn,
                     principal: Principal = as_moderator) -> dict[str, Any]:
        """Kept as labelled data for retraining. `counterfeit` makes the listing's photo a known-fake reference
        of its brand; a later `genuine` review of the same listing removes it (and, where the brand allows,
        adds the photo as a genuine reference). The next score of the photo sees the change."""
        b = be(request)
        report = await run_in_threadpool(
            record_review, b.home, b.engine.artifact, b.engine.model, listing_id=body.listing_id,
            label=body.label, reviewer_key_id=principal.key_id, note=body.note)
        return dataclasses.asdict(report)

    @app.get("/reviews", tags=["reviews"], summary="List reviews, oldest first (moderator; a brand key: its brand's)")
    async def reviews(request: Request, listing_id: str | None = Query(None, max_length=200),
                      after: int = Query(0, ge=0, le=2**62), limit: int = Query(100, ge=1, le=MAX_REVIEWS_PAGE),
                      ) -> dict[str, Any]:
        """Every review is kept: who (key id), when, the label, the note, the reference it added and the one
        it removed. Keyset pages: pass the last `id` seen as `after`."""
        principal = auth(request, Role.MODERATOR, Role.BRAND)
        brand_id = principal.brand_id if principal.role is Role.BRAND else None
        found = await run_in_threadpool(list_reviews, be(request).home, listing_id=listing_id, brand_id=brand_id,
                                        after=after, limit=limit)
        return {"reviews": [dataclasses.asdict(r) for r in found],
                "next": found[-1].review_id if len(found) == limit else None}

    @app.post("/keys", tags=["keys"], status_code=201, summary="Create an API key (admin); shown once")
    async def new_key(request: Request, body: KeyIn, _: Principal = as_admin) -> dict[str, Any]:
        key, who = await run_in_threadpool(create_key, be(request).home, role=body.role, brand=body.brand,
                                           label=body.label)
        return {"key": key, "key_id": who.key_id, "role": who.role.value, "brand": who.brand_name}

    return app


def _policy(row: Any) -> dict[str, Any]:
    return {"name": row.name, "review_at": row.review_at, "takedown_at": row.takedown_at,
            "wordmarks": row.wordmarks, "serial_pattern": row.serial_pattern,
            "serial_checksum": row.serial_checksum, "genuine_from_reviews": bool(row.genuine_from_reviews)}


async def _inputs(files: list[UploadFile]) -> list[InputImage]:
    """Uploaded images and zip archives → image bytes (archives expanded by the safe zip reader)."""
    out: list[InputImage] = []
    budget = upload_budget()  # pixels and inflated bytes, charged from headers before anything is decoded
    for i, upload in enumerate(files):
        data = await upload.read(MAX_BYTES + 1)
        label = (upload.filename or f"file{i}")[-200:]
        if len(data) > MAX_BYTES:
            raise ApiError(413, f"{label}: larger than {MAX_BYTES} bytes")
        if data[:4] == b"PK\x03\x04":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload.zip"
                path.write_bytes(data)
                if not is_zip(path):
                    raise ApiError(415, f"{label}: not a zip archive")
                budget.charge_archive(path, label)
                try:
                    found = collect_inputs([path])
                except MarkguardError as exc:  # name the upload, not the server's temporary copy
                    raise ApiError(exc.status, f"{label}: {str(exc).replace(str(path), 'archive')}", code=exc.code) from None
                for x in found:
                    budget.charge_image(x.data, label, bytes_counted=True)
                out.extend(InputImage(f"{label}!{x.label.split('!', 1)[-1]}", x.data) for x in found)
            continue
        try:
            sniff_format(data)
        except UnsupportedFormat:
            raise ApiError(415, f"{label}: not a JPEG, PNG or WebP image, nor a zip archive") from None
        except InvalidImage as exc:
            raise ApiError(422, f"{label}: {exc}") from None
        budget.charge_image(data, label)
        out.append(InputImage(label, data))
    return out
