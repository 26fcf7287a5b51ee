"""serving.serials: genuine-serial import (bounded memory, hashed), reuse across listings and sellers, `ocr` evidence."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from markguard.serving import serials as serials_mod
from markguard.serving.brands import add_brand, get_brand
from markguard.serving.cli import main
from markguard.serving.engine import CatalogEvidence
from markguard.serving.serials import (
    import_serials,
    record_serials,
    serial_records,
    serials_to_record,
)
from markguard.serving.state.home import Home
from markguard.serving.state.schema import GenuineSerial, Listing
from markguard.vision.evidence import OcrEvidence, SerialEvidence
from markguard.vision.pipeline import read_ocr_evidence
from markguard.vision.text import SerialCandidate, serial_key

PATTERN = r"[A-Z]{2}\d{8}"


@pytest.fixture
def home(tmp_path: Path, database_url: str | None) -> Home:
    home = Home(tmp_path / "home")  # on each catalog backend (MARKGUARD_DATABASE_URL set by `database_url`)
    with home.sessions.begin() as session:
        brand = add_brand(session, "Acme", wordmarks=["Aquila"])
        brand.serial_pattern, brand.serial_checksum = PATTERN, "none"
        add_brand(session, "Patagonia")
    return home


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_import_csv_and_text(home: Home, tmp_path: Path) -> None:
    csv_file = _write(tmp_path / "s.csv", ["id,serial", "1,AB12345678", "2,ab-1234-5678", "3,CD00000001", "4,XYZ"])
    report = import_serials(home, "acme", csv_file, progress=False)
    assert (report.brand, report.read, report.added, report.duplicates) == ("Acme", 4, 3, 1)
    assert report.format_mismatch == 2  # "ab-1234-5678" is stored under the same key; "XYZ" is no serial
    txt = _write(tmp_path / "s.txt", ["CD00000001", "", "EF99999999"])
    report = import_serials(home, "Acme", txt, progress=False)
    assert (report.read, report.added, report.duplicates) == (2, 1, 1)
    with home.sessions() as session:
        stored = set(session.scalars(select(GenuineSerial.serial_hmac)))
    assert home.keyed_hash("AB12345678") in stored and home.keyed_hash("EF99999999") in stored


def test_serials_never_stored_in_plain_text(home: Home, tmp_path: Path) -> None:
    rng = random.Random(0)
    serials = [f"QZ{rng.randrange(10**7, 10**8)}" for _ in range(500)]
    import_serials(home, "Acme", _write(tmp_path / "s.txt", serials), progress=False)
    with home.sessions.begin() as session:
        listing = Listing(image_sha256="0" * 64, risk=0.5, decision="review", model_tag="t")
        session.add(listing)
        session.flush()
        record_serials(session, home, listing_row_id=listing.id, brand_id=1, normalized_serials=serials[:5])
    if home.engine.dialect.name == "sqlite":  # the database file itself, free pages and WAL included
        home.close()
        blob = b"".join(p.read_bytes() for p in home.root.glob("catalog.sqlite*"))
    else:  # every stored value of every table
        from markguard.serving.state.schema import Base

        with home.engine.connect() as connection:
            blob = repr([list(connection.execute(table.select())) for table in Base.metadata.sorted_tables]).encode()
        home.close()
    assert len(blob) > 0
    for serial in serials[:50]:
        assert serial.encode() not in blob
        assert serial[2:].encode() not in blob  # not even the digits


@pytest.mark.sqlite_only  # measures the import's Python memory, not the catalog
def test_import_memory_is_bounded(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """100k serials in chunks of 5k: peak Python memory stays far below holding the file (~11 MB of hashes)."""
    path = tmp_path / "many.txt"
    with open(path, "w") as fh:
        for i in range(100_000):
            fh.write(f"MB{i:08d}\n")
    monkeypatch.setattr(serials_mod, "CHUNK", 5_000)
    tracemalloc.start()
    try:
        report = import_serials(home, "Acme", path, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.added == 100_000
    assert peak < 5 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    with home.sessions() as session:
        assert session.scalar(select(func.count()).select_from(GenuineSerial)) == 100_000


@pytest.mark.slow
def test_import_one_million_within_rss_bound(tmp_path: Path) -> None:
    """1M serials through the CLI in a fresh process: peak RSS grows by < 64 MiB (the file is ~11 MB, its hashes ~110 MB)."""
    script = textwrap.dedent(
        f"""
        import json, resource
        from markguard.serving.cli import main
        home = {str(tmp_path / "home")!r}
        path = {str(tmp_path / "million.txt")!r}
        with open(path, "w") as fh:
            fh.writelines(f"MM{{i:08d}}\\n" for i in range(1_000_000))
        main(["brand", "add", "Acme", "--home", home])
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        main(["serials", "import", "Acme", path, "--home", home])
        print("GROWTH", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    report = json.loads(lines[-2])
    assert report["added"] == 1_000_000
    assert int(lines[-1].split()[1]) < 64


def _listing(session, *, listing_id: str | None, seller_id: str | None) -> int:  # type: ignore[no-untyped-def]
    row = Listing(
        listing_id=listing_id, seller_id=seller_id, image_sha256="0" * 64, risk=0.5, decision="review", model_tag="t"
    )
    session.add(row)
    session.flush()
    return row.id


def test_reuse_counted_across_listings_and_sellers(home: Home) -> None:
    with home.sessions.begin() as session:
        acme = get_brand(session, "Acme")
        for listing_id, seller in [("L1", "s1"), ("L1", "s1"), ("L2", "s2"), (None, "s2"), ("L3", None)]:
            row = _listing(session, listing_id=listing_id, seller_id=seller)
            record_serials(session, home, listing_row_id=row, brand_id=acme.id, normalized_serials=["AB12345678"])
        other = get_brand(session, "Patagonia")  # the same serial on another brand is not this brand's reuse
        row = _listing(session, listing_id="L9", seller_id="s9")
        record_serials(session, home, listing_row_id=row, brand_id=other.id, normalized_serials=["AB12345678"])

    cand = SerialCandidate("AB 1234 5678", "AB12345678", True, None, 0, 0)
    with home.sessions() as session:
        acme = get_brand(session, "Acme")
        # a new seller: listings L1 (scored twice), L2, one without id, L3 → 4; sellers s1, s2 → 2
        [ev] = serial_records(session, home, brand_id=acme.id, normalized=[cand.normalized], seller_id="s3", listing_id="L4")
        assert (ev.seen_in_listings, ev.seen_by_sellers) == (4, 2)
        assert ev.registered is None  # the brand has no registry yet
        # seller s1 re-listing L1: its own listing and itself do not count
        [ev] = serial_records(session, home, brand_id=acme.id, normalized=[cand.normalized], seller_id="s1", listing_id="L1")
        assert (ev.seen_in_listings, ev.seen_by_sellers) == (3, 1)
        other = SerialCandidate("CD00000000", "CD00000000", True, None, 0, 0)
        [ev] = serial_records(session, home, brand_id=acme.id, normalized=[other.normalized])
        assert (ev.seen_in_listings, ev.seen_by_sellers) == (0, 0)


def test_registered_lookup_normalises_like_the_import(home: Home, tmp_path: Path) -> None:
    import_serials(home, "Acme", _write(tmp_path / "s.txt", ["ab-1234-5678"]), progress=False)
    with home.sessions() as session:
        acme = get_brand(session, "Acme")
        cands = [
            SerialCandidate("AB1234S678", "AB12345678", True, None, 1, 0),
            SerialCandidate("AB99999999", "AB99999999", True, None, 0, 0),
        ]
        records = serial_records(session, home, brand_id=acme.id, normalized=[c.normalized for c in cands])
    assert [r.registered for r in records] == [True, False]
    ocr = OcrEvidence(serials=tuple(SerialEvidence.of(c, r) for c, r in zip(cands, records, strict=True)))
    assert serials_to_record(ocr) == ["AB12345678", "AB99999999"]
    assert serial_key("ab-1234 5678") == "AB12345678"


def test_cli_import(home: Home, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "s.txt", ["AB00000001", "AB00000002"])
    assert main(["serials", "import", "Acme", str(path), "--home", str(home.root)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["added"] == 2 and report["brand"] == "Acme"
    assert main(["serials", "import", "Nobody", str(path), "--home", str(home.root)]) == 2


@pytest.mark.sqlite_only  # the OCR's reading; the catalog parts are covered above on each backend
def test_ocr_evidence_end_to_end(home: Home, tmp_path: Path) -> None:
    """Real OCR on a rendered label: the misspelt wordmark, the registered serial and its reuse."""
    from PIL import Image, ImageDraw, ImageFont

    from markguard.vision.ocr import shared_ocr_engine

    fonts = Path("/usr/share/fonts/truetype/dejavu")
    img = Image.new("RGB", (560, 200), "white")
    draw = ImageDraw.Draw(img)
    draw.text((24, 20), "AQUILLA", fill="black", font=ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), 56))
    draw.text((24, 120), "SN AB12345678", fill="black", font=ImageFont.truetype(str(fonts / "DejaVuSansMono.ttf"), 36))
    image = np.asarray(img)
    import_serials(home, "Acme", _write(tmp_path / "s.txt", ["AB12345678"]), progress=False)
    with home.sessions.begin() as session:
        row = _listing(session, listing_id="old", seller_id="other-seller")
        acme_id = get_brand(session, "Acme").id
        record_serials(session, home, listing_row_id=row, brand_id=acme_id, normalized_serials=["AB12345678"])
    source = CatalogEvidence(home)
    acme, _ = source.resolve("Acme", None)
    ocr = read_ocr_evidence(shared_ocr_engine(), image, shared_ocr_engine().read(image), brand=acme, source=source,
                            seller="me", listing="new").to_dict()
    assert [(w["brand"], w["match"], w["distance"]) for w in ocr["wordmarks"]] == [("Acme", "near_miss", 1)], ocr
    [serial] = ocr["serials"]
    assert serial["normalized"] == "AB12345678" and serial["format_ok"] is True
    assert serial["registered"] is True and serial["seen_in_listings"] == 1 and serial["seen_by_sellers"] == 1
    assert all(set(line) == {"text", "confidence", "box"} for line in ocr["lines"])
