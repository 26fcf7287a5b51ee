"""Reading a listing feed (JSON Lines, CSV or Parquet) in chunks, never whole.

Each row names one listing photo: `listing_id`, `seller_id`, `brand`, `product`, `title`, `image`.
Rows come out as plain dicts of strings (or None) with their 0-based position in the feed as `row`.
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
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        if fmt == "csv":
            return sum(1 for _ in csv.reader(fh)) - 1 if path.stat().st_size else 0
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
        out[name] = value or None
    return out


def _jsonl_rows(path: Path) -> Iterator[Any]:
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {n}: not JSON ({exc.msg})"


def _csv_rows(path: Path) -> Iterator[Any]:
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        yield from csv.DictReader(fh)


def _parquet_rows(path: Path) -> Iterator[Any]:
    import pyarrow.parquet as pq

    names = set(pq.ParquetFile(path).schema_arrow.names)
    columns = [c for c in FIELDS if c in names]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=columns):
        yield from batch.to_pylist()
