"""Enrolling reference images: files, folders and zip archives → blobs, catalog rows, index vectors.

All inputs are read, decoded and embedded before anything is written, outside the home's write lock (an
upload of many images holds no other writer up). Then, under the lock: duplicates and the brand's cap
checked again (another writer may have enrolled since), the blobs, the catalog rows in one transaction
and its commit, and only then the index (`indexing.commit_then_index`, write-ahead): a failure before
the commit leaves the catalog as it was (and blobs that `markguard home sweep` collects); one after it
leaves an index the next refresh rebuilds.
A reference keeps only the file's name (`public_label`, as valid text), never the operator's folders.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from markguard.serving.brands import get_brand, get_or_create_product
from markguard.serving.caps import CAPS
from markguard.serving.indexing import commit_then_index
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Reference, ReferenceKind
from markguard.vision.archive import IMAGE_SUFFIXES, is_zip, iter_zip_images
from markguard.vision.artifact import ModelArtifact
from markguard.vision.decode import MAX_BYTES, decode_image, file_name_text
from markguard.vision.embed import Embedder, embed_images
from markguard.vision.embed.preprocess import resize_square
from markguard.vision.errors import ImageError, ImageTooLarge, InvalidImage, MarkguardError

__all__ = ["InputImage", "collect_inputs", "enroll", "EnrollReport", "public_label"]


@dataclasses.dataclass(frozen=True)
class InputImage:
    label: str  # the file, or `archive.zip!member`, as the user will recognise it
    data: bytes
    error: ImageError | None = None  # why the file was not read (too large, unreadable): `enroll` refuses or skips it


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
    """The file's bytes; a file too large to read, or unreadable, is left to `enroll` (`skip_bad`) with its error."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return InputImage(label, b"", ImageTooLarge(f"{size} bytes exceeds the {MAX_BYTES}-byte limit"))
        return InputImage(label, path.read_bytes())
    except OSError as exc:
        return InputImage(label, b"", InvalidImage(f"cannot read ({exc.strerror or exc})"))


def public_label(label: str) -> str:
    """What a reference shows of where it came from: the file's name (and the archive member), without
    the folders on the machine that enrolled it. `/srv/keys/acme/refs.zip!a/b.jpg` → `refs.zip!a/b.jpg`."""
    outer, sep, member = label.partition("!") if ".zip!" in label.lower() else (label, "", "")
    name = outer.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return file_name_text(name + sep + member)[-1000:]


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
        brand_row = get_brand(session, brand)  # unknown brand: fail before decoding anything
        brand_name, enrolled = brand_row.name, _enrolled(session, brand_row.id)
    # one image decoded at a time and shrunk at once to the embedder's input (what `embed_images` would
    # do first, so the vectors are the same): a large upload never holds more than one full-size image
    decoded: list[tuple[InputImage, np.ndarray, str]] = []
    sizes: dict[str, tuple[int, int]] = {}  # sha256 → (width, height) as uploaded
    for item in inputs:
        digest = hashlib.sha256(item.data).hexdigest()
        if item.error is None and (digest in sizes or digest in enrolled):
            report.duplicates.append(item.label)
            continue
        try:
            if item.error is not None:
                raise item.error
            full = decode_image(item.data)
            pixels = resize_square(full, model.config.input_size)
        except ImageError as exc:
            if not skip_bad:
                raise type(exc)(f"{item.label}: {exc}") from None  # keeps its class: 415 or 422
            report.skipped.append((item.label, str(exc)))
            continue
        sizes[digest] = (int(full.shape[1]), int(full.shape[0]))
        del full
        decoded.append((item, pixels, digest))
    if not decoded:
        return report
    _check_cap(brand_name, len(enrolled) + len(decoded))  # before the embedding it would waste
    vectors = embed_images(model, [d[1] for d in decoded], progress=progress)

    with home.write_lock(), home.sessions() as session:
        brand_row = get_brand(session, brand)
        existing = _enrolled(session, brand_row.id)  # again: another writer may have enrolled some meanwhile
        keep = [i for i, d in enumerate(decoded) if d[2] not in existing]
        report.duplicates.extend(d[0].label for d in decoded if d[2] in existing)
        if not keep:
            return report
        _check_cap(brand_row.name, len(existing) + len(keep))
        fresh, vectors = [decoded[i] for i in keep], vectors[keep]
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


def _enrolled(session: Session, brand_id: int) -> set[str]:
    """The SHA-256 of every reference the brand holds."""
    return set(session.scalars(select(Reference.sha256).where(Reference.brand_id == brand_id)))


def _check_cap(brand: str, count: int) -> None:
    if count > CAPS.references:
        raise MarkguardError(f"brand {brand!r} would hold more than {CAPS.references} references, the cap")
