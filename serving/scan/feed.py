"""Reading a listing feed (JSON Lines, CSV or Parquet) in chunks, never whole.

Each row names one listing photo: `listing_id`, `seller_id`, `brand`, `product`, `title`, `image`.
Rows come out as plain dicts of strings (or None) with their 0-based position in the feed as `row`. A row
that cannot be read (not JSON, not CSV, a field that is not text) comes out with its `error`, in its place:
one bad row never stops the feed. A file that cannot be read at all (a corrupt Parquet) is a MarkguardError.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from markguard.vision.errors import MarkguardError

__all__ = ["FIELDS", "FEED_SUFFIXES", "feed_format", "count_rows", "read_chunks", "clean_row"]

FIELDS = ("listing_id", "seller_id", "brand", "product", "title", "image")
_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
FEED_SUFFIXES = frozenset(_FORMATS)
_MAX_FIELD = 2000  # characters of any one field (titles are cut to the API's limit later)
_CSV_FIELD_LIMIT = 1 << 24  # characters: Python's default (131,072) failed the whole feed on one long title


def feed_format(path: Path) -> str:
    """`jsonl`, `csv` or `parquet`, from the file name."""
    try:
        return _FORMATS[path.suffix.lower()]
    except KeyError:
        raise MarkguardError(f"{path}: unknown feed format (use .jsonl, .csv or .parquet)") from None


def count_rows(path: Path) -> int:
    """Rows in the feed, read in a streamed pass (Parquet: from its footer)."""
    fmt = feed_format(path)
    if fmt == "parquet":
        return _parquet_file(path).metadata.num_rows
    if fmt == "csv":
        return sum(1 for _ in _csv_rows(path))
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        return sum(1 for line in fh if line.strip())


def read_chunks(path: Path, *, size: int) -> Iterator[list[dict[str, Any]]]:
    """The feed's rows, `size` at a time, each cleaned by `clean_row` and numbered by position."""
    fmt = feed_format(path)
    if not path.is_file():
        raise MarkguardError(f"{path}: no such feed file")
    rows = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[fmt](path)
    chunk: list[dict[str, Any]] = []
    for i, raw in enumerate(rows):
        chunk.append(clean_row(raw, row=i))
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def clean_row(raw: Any, *, row: int) -> dict[str, Any]:
    """The six fields as stripped strings or None; a malformed row keeps its `error` for the report."""
    out: dict[str, Any] = dict.fromkeys(FIELDS)
    out["row"], out["error"] = row, None
    if not isinstance(raw, dict):
        out["error"] = raw if isinstance(raw, str) else "not an object"
        return out
    for name in FIELDS:
        value = raw.get(name)
        if value is None or (isinstance(value, float) and value != value):  # None, NaN from pandas
            continue
        if not isinstance(value, str | int):
            out["error"] = f"{name} must be text"
            continue
        value = str(value).strip()
        if len(value) > _MAX_FIELD:
            out["error"] = f"{name} longer than {_MAX_FIELD} characters"
            continue
        if "\0" in value:  # no file name or catalog column can hold it
            out["error"] = f"{name} holds a NUL character"
            continue
        if not _is_utf8(value):
            out["error"] = f"{name} is not UTF-8 text (an unpaired surrogate)"
            continue
        out[name] = value or None
    return out


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from a JSON escape such as "\ud800"
        return False
    return True


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8-sig", errors="replace") as fh:  # -sig: a BOM (Excel) is not the first row's
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {n}: not JSON ({exc.msg})"
            except ValueError:  # an integer past Python's digit limit
                yield f"line {n}: not JSON (a number too long)"
            except RecursionError:
                yield f"line {n}: not JSON (nested too deep)"


def _csv_rows(path: Path) -> Iterator[Any]:
    """Each record as a dict, or a record the csv module refuses as its error message."""
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.DictReader(fh)
        try:
            reader.fieldnames  # noqa: B018 - reads the header line
        except csv.Error as exc:
            raise MarkguardError(f"{path}: unreadable CSV header ({exc})") from None
        while True:
            line = reader.line_num + 1  # where the next record starts
            try:
                yield next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader goes on at the next line
                yield f"line {line}: not CSV ({exc})"


def _parquet_file(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except pa.ArrowException as exc:
        raise _unreadable_parquet(path, exc) from None


def _parquet_rows(path: Path) -> Iterator[Any]:
    import pyarrow as pa

    feed = _parquet_file(path)
    columns = [c for c in FIELDS if c in set(feed.schema_arrow.names)]
    try:
        for batch in feed.iter_batches(batch_size=1024, columns=columns):
            yield from batch.to_pylist()
    except pa.ArrowException as exc:
        raise _unreadable_parquet(path, exc) from None


def _unreadable_parquet(path: Path, exc: Exception) -> MarkguardError:
    """The feed as a whole: a Parquet file that is not one (or is cut short) has no rows to report."""
    return MarkguardError(f"{path}: unreadable Parquet file ({(str(exc).splitlines() or ['?'])[0]})")
