"""Serial intelligence: the brands' genuine-serial registry, serial reuse across listings, the `ocr` evidence.

Serials are stored only as keyed hashes (HMAC-SHA256 with the home's secret) of their canonical form
(`vision.text.serial_key`: letters and digits, upper case), never as text: a leaked catalog does not
leak a brand's serials, and two homes cannot be joined on them.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import hmac
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import String, cast, delete, distinct, func, literal, or_, select
from sqlalchemy.orm import Session
from tqdm import tqdm

from markguard.serving.brands import get_brand
from markguard.serving.caps import CAPS
from markguard.serving.state.home import Home
from markguard.serving.state.schema import GenuineSerial, Listing, ListingSerial, SerialImport
from markguard.vision.errors import MarkguardError
from markguard.vision.evidence import OcrEvidence, SerialRecord
from markguard.vision.patterns import PatternError, SerialPattern, compile_pattern
from markguard.vision.text import serial_key

__all__ = [
    "ImportReport",
    "import_serials",
    "registered_serials",
    "serial_records",
    "record_serials",
    "serials_to_record",
]

CHUNK = 5_000  # serials written per transaction: bounds memory, and how long other writers wait on an import
MAX_LINE = 65_536  # bytes of one line of a serial file
MAX_SERIAL = 200  # characters of one serial
_HEADER_NAMES = {"serial", "serials", "serial_number", "serialnumber", "sn"}


@dataclasses.dataclass(frozen=True)
class ImportReport:
    brand: str
    read: int  # non-empty serials in the file
    added: int  # new to the registry
    duplicates: int  # already registered, or repeated in the file
    format_mismatch: int  # serials the brand's pattern rejects (stored all the same)
    elapsed_s: float


def _hasher(home: Home) -> Callable[[str], str]:
    """`home.keyed_hash` with the secret read once (it is read from disk on every call)."""
    secret = home.secret()
    return lambda text: hmac.digest(secret, text.encode("utf-8"), "sha256").hex()


def _lines(fh: BinaryIO, bar: tqdm) -> Iterator[str]:
    for number, raw in enumerate(iter(lambda: fh.readline(MAX_LINE + 1), b""), 1):
        if len(raw) > MAX_LINE:
            raise MarkguardError(f"line {number}: longer than {MAX_LINE} bytes")
        bar.update(len(raw))
        yield raw.decode("utf-8", errors="replace")


def _serials(path: Path, bar: tqdm) -> Iterator[str]:
    """Stream the serials of a CSV (a `serial` column, else the first) or plain-text file (one a line).

    A malformed file raises `MarkguardError` naming the line: nothing of it is kept (see `import_serials`).
    """
    with open(path, "rb") as fh:
        head = fh.readline(MAX_LINE + 1)
        fh.seek(0)
        first = head.decode("utf-8", errors="replace").lstrip("\ufeff")
        is_csv = path.suffix.lower() == ".csv" or "," in first or "\t" in first
        if not is_csv:
            for number, line in enumerate(_lines(fh, bar), 1):
                text = line.strip().lstrip("\ufeff")
                if text and not text.startswith("#") and text.casefold() not in _HEADER_NAMES:
                    yield _checked(text, number)
            return
        delimiter = "\t" if "\t" in first and "," not in first else ","
        rows = csv.reader(_lines(fh, bar), delimiter=delimiter)
        column = 0
        try:
            for row_no, row in enumerate(rows):
                if not row:
                    continue
                if row_no == 0:
                    names = [c.strip().lstrip("\ufeff").casefold() for c in row]
                    hits = [i for i, n in enumerate(names) if n in _HEADER_NAMES]
                    if hits or not any(ch.isdigit() for ch in "".join(names)):  # a header row
                        column = hits[0] if hits else 0
                        continue
                if column < len(row) and row[column].strip():
                    yield _checked(row[column].strip(), rows.line_num)
        except csv.Error as exc:  # the module's text ends with advice about open(); keep the finding
            reason = str(exc).split(" - ", 1)[0]
            raise MarkguardError(f"line {rows.line_num}: malformed CSV ({reason})") from None


def _checked(serial: str, line: int) -> str:
    if len(serial) > MAX_SERIAL:
        raise MarkguardError(f"line {line}: a serial longer than {MAX_SERIAL} characters")
    return serial


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(GenuineSerial).on_conflict_do_nothing(), rows)
    elif dialect == "sqlite":  # the driver's executemany: SQLAlchemy's per-row work would dominate
        session.connection().exec_driver_sql(
            "INSERT OR IGNORE INTO genuine_serials (brand_id, serial_hmac, import_id) VALUES (?, ?, ?)",
            [(r["brand_id"], r["serial_hmac"], r.get("import_id")) for r in rows],
        )
    else:  # pragma: no cover - the catalog runs on SQLite or PostgreSQL
        raise MarkguardError(f"serial import does not support the {dialect} database")


def import_serials(
    home: Home, brand: str, path: str | os.PathLike[str], *, progress: bool = True
) -> ImportReport:
    """Register a brand's genuine serials from a CSV or text file of any size, streamed.

    All or nothing, in short transactions. The whole file is read, checked and hashed into a scratch
    database before anything is written, so a malformed line anywhere (`MarkguardError` naming it) or a
    file past the cap keeps nothing. The hashes are then written in key order, `CHUNK` to a transaction
    (other writers, such as another brand's scores, go between them), under a `serial_imports` row; they
    count from the moment that row is marked finished, in one small transaction. An error part-way removes
    what the import wrote; a crash leaves rows that never count, which the brand's next import removes.
    Imports of one brand take turns (`Home.serial_import_lock`). Re-running is harmless: serials already
    registered are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise MarkguardError(f"{path}: no such file")
    started = time.perf_counter()
    with home.sessions() as session:
        row = get_brand(session, brand)
        brand_id, brand_name, regex = row.id, row.name, _pattern_or_none(row.serial_pattern)
    with home.serial_import_lock(brand_id), _scratch(home, brand_id) as scratch:
        for stale in _unfinished(home, brand_id):  # killed imports' rows: they never counted
            _remove(home, stale)
        with home.sessions() as session:
            before = _registered(session, brand_id)
        bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="serials", disable=not progress)
        with bar:
            read, mismatched = _stage(path, scratch, _hasher(home), regex, bar=bar, room=CAPS.serials - before,
                                      cap_error=f"brand {brand_name!r} would hold more than {CAPS.serials} "
                                                f"serials (the cap; {before} registered)")
        added = _write(home, brand_id, scratch)
    return ImportReport(
        brand=brand_name,
        read=read,
        added=added,
        duplicates=read - added,
        format_mismatch=mismatched,
        elapsed_s=round(time.perf_counter() - started, 3),
    )


@contextlib.contextmanager
def _scratch(home: Home, brand_id: int) -> Iterator[sqlite3.Connection]:
    """A scratch database in the home for the import's digests, which SQLite sorts on disk: the catalog
    gets them in key order (each chunk touches a narrow run of its B-tree), in bounded memory. Taken
    under the brand's import lock, so a killed import's file is this brand's and can go."""
    folder = home.root / "imports"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"serials-{brand_id}.scratch"
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    scratch = sqlite3.connect(path)
    try:
        for pragma in ("journal_mode=OFF", "synchronous=OFF"):  # scratch: nothing to recover after a crash
            scratch.execute(f"PRAGMA {pragma}")
        scratch.execute("CREATE TABLE staged (digest BLOB NOT NULL)")
        yield scratch
    finally:
        scratch.close()
        path.unlink()


def _stage(path: Path, scratch: sqlite3.Connection, keyed: Callable[[str], str], regex: SerialPattern | None, *,
           bar: tqdm, room: int, cap_error: str) -> tuple[int, int]:
    """Read, check and hash the whole file into the scratch database, writing nothing to the catalog:
    (serials read, serials the pattern rejects)."""
    read = mismatched = 0
    batch: list[tuple[bytes]] = []
    for text in _serials(path, bar):
        read += 1
        if read > room:  # duplicates counted: a bound
            raise MarkguardError(cap_error)
        if regex is not None and not (regex.fullmatch(text) or regex.fullmatch(text.upper())):
            mismatched += 1
        key = serial_key(text)
        if key:
            batch.append((bytes.fromhex(keyed(key)),))
        if len(batch) >= CHUNK:
            scratch.executemany("INSERT INTO staged VALUES (?)", batch)
            batch.clear()
    scratch.executemany("INSERT INTO staged VALUES (?)", batch)
    scratch.commit()
    return read, mismatched


def _write(home: Home, brand_id: int, scratch: sqlite3.Connection) -> int:
    """Write the staged digests in key order under a new import, `CHUNK` to a transaction, then mark the
    import finished (from then on they count); on an error, remove what it wrote. The serials added."""
    with home.write_lock(), home.sessions.begin() as session:
        job = SerialImport(brand_id=brand_id)
        session.add(job)
        session.flush()
        import_id = job.id
    try:
        cursor = scratch.execute("SELECT DISTINCT digest FROM staged ORDER BY digest")
        while chunk := [digest.hex() for (digest,) in cursor.fetchmany(CHUNK)]:
            with home.write_lock(), home.sessions.begin() as session:
                _insert_ignoring_duplicates(session, [{"brand_id": brand_id, "serial_hmac": h, "import_id": import_id}
                                                      for h in chunk])
        with home.write_lock(), home.sessions.begin() as session:
            session.get(SerialImport, import_id).finished_at = dt.datetime.now(dt.UTC)
            return int(session.scalar(select(func.count()).where(GenuineSerial.import_id == import_id)) or 0)
    except BaseException:
        _remove(home, import_id)
        raise


def _unfinished(home: Home, brand_id: int) -> list[int]:
    with home.sessions() as session:
        return list(session.scalars(select(SerialImport.id).where(SerialImport.brand_id == brand_id,
                                                                  SerialImport.finished_at.is_(None))))


def _remove(home: Home, import_id: int) -> None:
    """An unfinished import's rows, `CHUNK` to a transaction, then the import."""
    while True:
        with home.write_lock(), home.sessions.begin() as session:
            chunk = list(session.scalars(select(GenuineSerial.serial_hmac)
                                         .where(GenuineSerial.import_id == import_id).limit(CHUNK)))
            if not chunk:
                session.execute(delete(SerialImport).where(SerialImport.id == import_id))
                return
            session.execute(delete(GenuineSerial).where(GenuineSerial.import_id == import_id,
                                                        GenuineSerial.serial_hmac.in_(chunk)))


def _pattern_or_none(pattern: str | None) -> SerialPattern | None:
    """The brand's pattern on RE2; one stored before RE2 checked patterns is not used to count mismatches."""
    try:
        return compile_pattern(pattern, max_chars=4096) if pattern else None
    except PatternError:
        return None


# a registered serial: from before imports were recorded (migration 0012), or of a finished import
_COUNTED = or_(GenuineSerial.import_id.is_(None),
               GenuineSerial.import_id.in_(select(SerialImport.id).where(SerialImport.finished_at.is_not(None))))


def _registered(session: Session, brand_id: int) -> int:
    """The brand's serials, counted or not (under its import lock, after the unfinished imports' removal,
    all of them count)."""
    return int(session.scalar(select(func.count()).where(GenuineSerial.brand_id == brand_id)) or 0)


def registered_serials(session: Session, brand_id: int | None = None) -> int:
    """How many serials count as registered (of one brand, or of all)."""
    query = select(func.count()).select_from(GenuineSerial).where(_COUNTED)
    if brand_id is not None:
        query = query.where(GenuineSerial.brand_id == brand_id)
    return int(session.scalar(query) or 0)


def serial_records(
    session: Session,
    home: Home,
    *,
    brand_id: int | None,
    normalized: Sequence[str],
    seller_id: str | None = None,
    listing_id: str | None = None,
) -> list[SerialRecord]:
    """Per serial read (normalised): registered in the brand's genuine registry (None: the brand has
    none), and the distinct other listings (by listing id, else by row) and other sellers that showed it.
    Only the serials of finished imports count (`_COUNTED`)."""
    keyed = _hasher(home)
    has_registry = brand_id is not None and session.scalar(
        select(GenuineSerial.serial_hmac).where(GenuineSerial.brand_id == brand_id, _COUNTED).limit(1)
    )
    out = []
    for text in normalized:
        digest = keyed(serial_key(text))
        registered = None
        if has_registry:
            registered = session.scalar(select(GenuineSerial.serial_hmac).where(
                GenuineSerial.brand_id == brand_id, GenuineSerial.serial_hmac == digest, _COUNTED)) is not None
        listings, sellers = _seen(session, digest, brand_id, None, seller_id, listing_id)
        out.append(SerialRecord(registered=registered, seen_in_listings=listings, seen_by_sellers=sellers))
    return out


def _seen(
    session: Session,
    digest: str,
    brand_id: int | None,
    listing_row_id: int | None,
    seller_id: str | None,
    listing_id: str | None,
) -> tuple[int, int]:
    same_brand = ListingSerial.brand_id == brand_id if brand_id is not None else ListingSerial.brand_id.is_(None)
    base = (
        select()
        .select_from(ListingSerial)
        .join(Listing, Listing.id == ListingSerial.listing_row_id)
        .where(ListingSerial.serial_hmac == digest, same_brand)
    )
    if listing_row_id is not None:
        base = base.where(Listing.id != listing_row_id)
    if listing_id is not None:  # the same listing scored again is not reuse
        base = base.where(or_(Listing.listing_id.is_(None), Listing.listing_id != listing_id))
    listing_key = func.coalesce(Listing.listing_id, literal("#").concat(cast(Listing.id, String)))
    listings = session.scalar(base.add_columns(func.count(distinct(listing_key))))
    sellers_q = base.add_columns(func.count(distinct(Listing.seller_id))).where(Listing.seller_id.is_not(None))
    if seller_id is not None:
        sellers_q = sellers_q.where(Listing.seller_id != seller_id)
    return int(listings or 0), int(session.scalar(sellers_q) or 0)


def serials_to_record(ocr: OcrEvidence) -> list[str]:
    """The serials of a photo's OCR evidence worth remembering: those the brand's pattern does not reject."""
    return [s.normalized for s in ocr.serials if s.format_ok is not False]


def record_serials(
    session: Session,
    home: Home,
    *,
    listing_row_id: int,
    brand_id: int | None,
    normalized_serials: Sequence[str],
) -> int:
    """Remember the serials a scored listing showed (keyed hashes), so later listings see the reuse."""
    keyed = _hasher(home)
    digests = dict.fromkeys(keyed(k) for k in (serial_key(s) for s in normalized_serials) if k)
    for digest in digests:
        session.add(ListingSerial(listing_row_id=listing_row_id, brand_id=brand_id, serial_hmac=digest))
    return len(digests)
