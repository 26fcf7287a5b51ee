"""Reference and serial routes (the brand's key, or admin): list, upload and delete reference images;
import genuine serials. Uploads are multipart files (FastAPI `File`): images or zip archives."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from markguard.serving.budget import OVER_BUDGET, upload_budget
from markguard.serving.caps import CAPS
from markguard.serving.catalog import Catalog
from markguard.serving.enroll import InputImage, collect_inputs, enroll
from markguard.serving.limits import ApiError
from markguard.serving.routes.deps import MAX_ID, BrandKey, backend, brand_of, errors
from markguard.serving.routes.schemas import DeletedOut, ReferencesOut, SerialsOut, UploadOut
from markguard.serving.routes.scoring import MAX_BATCH_IMAGES, Multipart
from markguard.serving.state.schema import ReferenceKind
from markguard.vision.archive import is_zip
from markguard.vision.decode import MAX_BYTES, sniff_format
from markguard.vision.errors import InvalidImage, MarkguardError, NotFound, UnsupportedFormat

__all__ = ["read_uploads", "router"]

router = APIRouter(tags=["references"], form_limits={"max_files": MAX_BATCH_IMAGES, "max_fields": 64})


@router.get("/brands/{brand}/references", summary="List a brand's references", response_model=ReferencesOut,
            responses=errors(404, 422))
async def list_references(request: Request, brand: str, principal: BrandKey, limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
                          after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0) -> Any:
    """Oldest first; keyset pages: pass the last `id` seen as `after`."""
    name = brand_of(request, principal, brand)
    refs = await run_in_threadpool(Catalog(backend(request).home).references, name, after=after, limit=limit)
    return {"brand": name, "references": [
        {k: v for k, v in dataclasses.asdict(r).items() if k != "brand"} for r in refs]}


@router.post("/brands/{brand}/references", status_code=201, response_model=UploadOut,
             summary="Upload reference images (files or zip archives)", responses=errors(400, 404, 413, 415, 422))
async def upload_references(
    request: Request,
    brand: str,
    principal: BrandKey,
    __: Multipart,
    files: Annotated[list[UploadFile], File(description="images (JPEG, PNG, WebP) or zip archives of them")],
    product: Annotated[str | None, Form(max_length=100)] = None,
    kind: Annotated[Literal["genuine", "counterfeit"], Form()] = "genuine",
) -> Any:
    """All-or-nothing: one unreadable image refuses the upload. `counterfeit` enrolls known fakes."""
    name = brand_of(request, principal, brand)
    inputs = await read_uploads(files)
    b = backend(request)
    report = await run_in_threadpool(
        enroll, b.home, b.engine.artifact, b.engine.model, brand=name, inputs=inputs, product=product or None,
        kind=ReferenceKind(kind))
    return {"brand": name, "added": report.added, "duplicates": report.duplicates}


@router.delete("/brands/{brand}/references/{reference_id}", summary="Delete a reference", response_model=DeletedOut,
               responses=errors(404, 422))
async def delete_reference(request: Request, brand: str,
                           reference_id: Annotated[int, PathParam(ge=1, le=MAX_ID)], principal: BrandKey) -> Any:
    name = brand_of(request, principal, brand)
    try:
        deleted = await run_in_threadpool(Catalog(backend(request).home).delete_references, name, [reference_id])
    except NotFound:
        raise ApiError(404, f"brand {name!r} has no reference {reference_id}") from None
    return {"brand": name, "deleted": deleted}


@router.post("/brands/{brand}/serials", tags=["serials"], summary="Import genuine serials (CSV or text file)",
             response_model=SerialsOut, responses=errors(400, 404, 413, 415, 422))
async def import_brand_serials(
    request: Request,
    brand: str,
    principal: BrandKey,
    __: Multipart,
    file: Annotated[UploadFile, File(description="one serial a line, or a CSV with a `serial` column")],
) -> Any:
    """Stored as keyed hashes, all or nothing: a malformed file adds nothing."""
    from markguard.serving.serials import import_serials

    name = brand_of(request, principal, brand)
    suffix = Path(file.filename or "").suffix.lower()
    with tempfile.NamedTemporaryFile(suffix=suffix if suffix in (".txt", ".tsv") else ".csv") as fh:
        while chunk := await file.read(1 << 20):
            fh.write(chunk)
        fh.flush()
        report = await run_in_threadpool(import_serials, backend(request).home, name, fh.name, progress=False)
    return dataclasses.asdict(report)


async def read_uploads(files: list[UploadFile]) -> list[InputImage]:
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
                _count_images(len(out) + len(found), label)
                for x in found:
                    budget.charge_image(x.data, label, bytes_counted=True)
                out.extend(InputImage(f"{label}!{x.label.split('!', 1)[-1]}", x.data) for x in found)
            continue
        try:
            sniff_format(data)
        except UnsupportedFormat:
            raise ApiError(415, f"{label}: not a JPEG, PNG or WebP image, nor a zip archive") from None
        except InvalidImage as exc:
            raise ApiError(422, f"{label}: {exc}", code=exc.code) from None
        _count_images(len(out) + 1, label)
        budget.charge_image(data, label)
        out.append(InputImage(label, data))
    return out


def _count_images(count: int, label: str) -> None:
    """413 when an upload holds more images than `CAPS.upload_images`: each is decoded and embedded, so
    thousands of tiny ones cost time that the pixel and byte budgets do not see."""
    if count > CAPS.upload_images:
        raise ApiError(413, f"{label}: over the cap of {CAPS.upload_images} images per upload (zip members "
                            f"counted); send fewer per request", code=OVER_BUDGET)
