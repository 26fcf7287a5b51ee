"""Enrolling reference images: files, folders and zip archives → blobs, catalog rows, index vectors.

All inputs are read, decoded and embedded before anything is written. Then, under the home's write
lock: the blobs, the catalog rows in one transaction and its commit, and only then the index
(`indexing.commit_then_index`, write-ahead): a failure before the commit leaves the catalog as it was
(and blobs that `markguard home sweep` collects); one after it leaves an index the next refresh rebuilds.
A reference keeps only the file's name (`public_label`), never the operator's folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select

from markguard.serving.brands import get_brand, get_or_create_product
from markguard.serving.caps import CAPS
from markguard.serving.indexing import commit_then_index
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference, ReferenceKind
from markguard.vision.archive import IMAGE_SUFFIXES, is_zip, iter_zip_images
from markguard.vision.artifact import ModelArtifact
from markguard.vision.decode import MAX_BYTES, decode_image
from markguard.vision.embed import Embedder, embed_images
from markguard.vision.embed.preprocess import resize_square
from markguard.vision.errors import ImageError, MarkguardError

__all__ = ["InputImage", "collect_inputs", "enroll", "EnrollReport", "public_label"]


@dataclasses.dataclass(frozen=True)
class InputImage:
    label: str  # the file, or `archive.zip!member`, as the user will recognise it
    data: bytes


def collect_inputs(paths: Iterable[str | Path]) -> list[InputImage]:
    """Expand files, folders (recursively, image suffixes only) and zip archives into image bytes."""
    found: list[InputImage] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise MarkguardError(f"{raw}: no images found in folder")
            found.extend(_read_file(p, str(p)) for p in files)
        elif path.is_file() and path.suffix.lower() == ".zip" or (path.is_file() and is_zip(path)):
            members = [InputImage(f"{raw}!{m.name}", m.data) for m in iter_zip_images(path)]
            if not members:
                raise MarkguardError(f"{raw}: no images found in archive")
            found.extend(members)
        elif path.exists():
            found.append(_read_file(path, str(raw)))
        else:
            raise MarkguardError(f"{raw}: no such file or folder")
    return found


def _read_file(path: Path, label: str) -> InputImage:
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise MarkguardError(f"{label}: {size} bytes exceeds the {MAX_BYTES}-byte limit")
    return InputImage(label, path.read_bytes())


def public_label(label: str) -> str:
    """What a reference shows of where it came from: the file's name (and the archive member), without
    the folders on the machine that enrolled it. `/srv/keys/acme/refs.zip!a/b.jpg` → `refs.zip!a/b.jpg`."""
    outer, sep, member = label.partition("!") if ".zip!" in label.lower() else (label, "", "")
    name = outer.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return (name + sep + member)[-1000:]


@dataclasses.dataclass
class EnrollReport:
    added: list[int] = dataclasses.field(default_factory=list)  # reference ids
    duplicates: list[str] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (label, reason)


def enroll(
    home: Home,
    artifact: ModelArtifact,
    model: Embedder,
    *,
    brand: str,
    inputs: list[InputImage],
    product: str | None = None,
    kind: ReferenceKind = ReferenceKind.GENUINE,
    skip_bad: bool = False,
    progress: bool = False,
) -> EnrollReport:
    report = EnrollReport()
    with home.sessions() as session:
        get_brand(session, brand)  # unknown brand: fail before decoding anything
    # one image decoded at a time and shrunk at once to the embedder's input (what `embed_images` would
    # do first, so the vectors are the same): a large upload never holds more than one full-size image
    decoded: list[tuple[InputImage, np.ndarray, str]] = []
    sizes: dict[str, tuple[int, int]] = {}  # sha256 → (width, height) as uploaded
    seen: set[str] = set()
    for item in inputs:
        try:
            full = decode_image(item.data)
            pixels = resize_square(full, model.config.input_size)
        except ImageError as exc:
            if not skip_bad:
                raise type(exc)(f"{item.label}: {exc}") from None  # keeps its class: 415 or 422
            report.skipped.append((item.label, str(exc)))
            continue
        digest = hashlib.sha256(item.data).hexdigest()
        if digest in seen:
            report.duplicates.append(item.label)
            continue
        seen.add(digest)
        sizes[digest] = (int(full.shape[1]), int(full.shape[0]))
        del full
        decoded.append((item, pixels, digest))

    with home.write_lock(), home.sessions() as session:
        brand_row = get_brand(session, brand)
        existing = set(session.scalars(select(Reference.sha256).where(Reference.brand_id == brand_row.id)))
        fresh = [d for d in decoded if d[2] not in existing]
        report.duplicates.extend(d[0].label for d in decoded if d[2] in existing)
        if not fresh:
            return report
        if len(existing) + len(fresh) > CAPS.references:
            raise MarkguardError(f"brand {brand_row.name!r} would hold more than {CAPS.references} references, the cap")
        vectors = embed_images(model, [d[1] for d in fresh], progress=progress)
        product_row = get_or_create_product(session, brand_row, product) if product else None
        rows = []
        for item, _, digest in fresh:
            home.put_blob(item.data)
            rows.append(
                Reference(
                    brand_id=brand_row.id,
                    product_id=product_row.id if product_row else None,
                    kind=kind,
                    sha256=digest,
                    width=sizes[digest][0],
                    height=sizes[digest][1],
                    source=public_label(item.label),
                )
            )
        session.add_all(rows)
        session.flush()  # assigns ids inside the still-open transaction
        commit_then_index(home, session, artifact=artifact, added=rows, vectors=vectors)
        report.added = [r.id for r in rows]
    return report
