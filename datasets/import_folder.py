"""`import-folder`: a user's own photos, `BRAND/[PRODUCT/]*.jpg` plus an optional `counterfeit/` subtree,
from a folder or a zip of one.

Archives are read, never extracted: no path from the archive is ever used for writing (images are
stored under their content hash), and `markguard.vision.archive` caps member count, sizes and
compression ratios before anything is inflated; an unsafe member is skipped with its reason. Every
image goes through the safe decoder; every skip has a reason.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from markguard.datasets.build import BuildReport, Skipped, Tile, finish_build, prepare_output, write_atomic
from markguard.datasets.manifest import Label, ManifestRow
from markguard.datasets.splits import split_for
from markguard.vision.archive import ArchiveError, ArchiveLimits, member_problem, open_zip, read_member
from markguard.vision.decode import MAX_BYTES, decode_image, file_name_text, sniff_format
from markguard.vision.errors import ImageError

__all__ = ["IMPORT_LIMITS", "ImportOptions", "build_import"]

COUNTERFEIT_DIR = "counterfeit"
# a dataset may hold more photos than a reference upload; a stricter ratio, since a bad member is skipped, not fatal
IMPORT_LIMITS = ArchiveLimits(max_members=20_000, max_ratio=100.0)


@dataclass(frozen=True)
class ImportOptions:
    seed: int = 0
    val_fraction: float = 0.2  # share of images (by content hash) put in `val`
    limits: ArchiveLimits = IMPORT_LIMITS


@dataclass(frozen=True)
class _Entry:
    name: str  # posix path inside the source, used only for brand/product names and reports
    read: Callable[[], bytes]


class _Refused(Exception):
    """A whole source refused (missing, unreadable, an archive over the caps)."""


def _folder_entries(root: Path, skipped: list[Skipped]) -> Iterator[_Entry]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = file_name_text(path.relative_to(root).as_posix())  # stored in the manifest: valid text
            if path.is_symlink():
                skipped.append(Skipped(rel, "symbolic link (not followed)"))
                continue
            yield _Entry(rel, lambda p=path: _read_file(p))


def _read_file(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ImageError(f"{size} bytes exceeds the {MAX_BYTES}-byte limit")
    return path.read_bytes()


def _zip_entries(path: Path, limits: ArchiveLimits, skipped: list[Skipped]) -> Iterator[_Entry]:
    try:
        archive = open_zip(path, limits)
    except ArchiveError as exc:
        raise _Refused(str(exc).removeprefix(f"{path}: ")) from None
    with archive:
        for info in sorted(archive.infolist(), key=lambda m: m.filename):
            if info.is_dir():
                continue
            if (why := member_problem(info, limits)) is not None:
                skipped.append(Skipped(info.filename, why))
                continue
            yield _Entry(info.filename, lambda info=info: read_member(archive, info))


def _layout(name: str) -> tuple[Label, str, str | None] | str:
    """(label, brand, product) from `[counterfeit/]BRAND/[PRODUCT/]file`, or why it does not fit."""
    parts = list(PurePosixPath(name).parts)
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return "hidden file or folder"
    label = Label.GENUINE
    if parts and parts[0].lower() == COUNTERFEIT_DIR:
        label, parts = Label.COUNTERFEIT, parts[1:]
    if len(parts) < 2:
        return "not inside a BRAND folder"
    if len(parts) > 3:
        return "too deep: expected BRAND/[PRODUCT/]image"
    brand = _clean(parts[0])
    product = _clean(parts[1]) if len(parts) == 3 else None
    if not brand or (len(parts) == 3 and not product):
        return "empty brand or product name"
    return label, brand, product


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()


def build_import(src: Path, out: Path, *, opts: ImportOptions, force: bool = False,
                 progress: bool = True) -> tuple[BuildReport, dict]:
    """Import a folder or zip archive into `out`; returns the report (with every skip) and the stats."""
    fingerprint = {"command": "import-folder", "source": str(src), "options": {
        "seed": opts.seed, "val_fraction": opts.val_fraction, "limits": opts.limits.__dict__}}
    prepare_output(out, fingerprint=fingerprint, force=force)
    report = BuildReport(out=out, command="import-folder", rows=[])
    tiles: dict[str, list[Tile]] = {}
    seen: dict[str, str] = {}
    try:
        if src.is_dir():
            entries = _folder_entries(src, report.skipped)
        elif src.is_file():
            entries = _zip_entries(src, opts.limits, report.skipped)
        else:
            raise _Refused("source missing")
        for entry in tqdm(entries, desc="import", unit="file", disable=None if progress else True):
            _import_one(entry, out=out, opts=opts, report=report, seen=seen, tiles=tiles)
    except _Refused as exc:
        report.skipped.append(Skipped(str(src), str(exc)))
    except OSError as exc:
        report.skipped.append(Skipped(str(src), f"unreadable source ({exc.strerror or exc})"))
    sheet = [tiles[b] for b in sorted(tiles)][:8]
    title = f"import-folder: {len(report.rows)} images, {len(tiles)} brands; green genuine, red counterfeit"
    return report, finish_build(report, sheet=sheet, title=title)


def _import_one(entry: _Entry, *, out: Path, opts: ImportOptions, report: BuildReport, seen: dict[str, str],
                tiles: dict[str, list[Tile]]) -> None:
    layout = _layout(entry.name)
    if isinstance(layout, str):
        report.skipped.append(Skipped(entry.name, layout))
        return
    label, brand, product = layout
    try:
        data = entry.read()
        image = decode_image(data)
    except (ImageError, ArchiveError) as exc:
        report.skipped.append(Skipped(entry.name, str(exc)))
        return
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError, RuntimeError) as exc:
        report.skipped.append(Skipped(entry.name, f"unreadable ({str(exc)[:100]})"))
        return
    digest = hashlib.sha256(data).hexdigest()
    if digest in seen:
        report.skipped.append(Skipped(entry.name, f"duplicate of {seen[digest]}"))
        return
    seen[digest] = entry.name
    ext = sniff_format(data).value.lower().replace("jpeg", "jpg")
    rel = f"images/{label}/{digest[:24]}.{ext}"  # named by content: nothing from the source path is written
    write_atomic(out / rel, data)
    split = "val" if split_for(digest, seed=opts.seed, val_fraction=opts.val_fraction, test_fraction=0.0) == "val" else "train"
    report.rows.append(ManifestRow(image=rel, brand=brand, product=product, label=label, split=split,
                                   source=f"import:{entry.name}"))
    row = tiles.setdefault(brand, [])
    if len(row) < 8:
        row.append(Tile(image, f"{label}: {product or brand}", label))
        row.sort(key=lambda t: t.label is Label.COUNTERFEIT)
