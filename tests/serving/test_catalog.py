"""The catalog on each backend (SQLite and PostgreSQL): migrations, times, ids, keys, and two processes
writing at once. The `database_url` fixture gives every test a fresh catalog per backend."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import StatementError

from markguard.serving.brands import add_brand, get_brand, list_brands
from markguard.serving.engine import CatalogEvidence
from markguard.serving.keys import Role, authenticate, create_key, revoke_key
from markguard.serving.state.catalog import alembic_config
from markguard.serving.state.home import Home
from markguard.serving.state.schema import ApiKey, Brand, GenuineSerial, Listing, ListingSerial
from markguard.vision.errors import MarkguardError
from markguard.vision.phash import PerceptualHash, band_keys, hamming

# the newest migration: every catalog test runs on a home migrated to it
HEAD = sorted(p.name.split("_")[0] for p in (Path(__file__).resolve().parents[2] / "serving" / "state" / "migrations"
                                             / "versions").glob("0*.py"))[-1]


@pytest.fixture()
def home(tmp_path: Path, database_url: str | None) -> Home:
    home = Home(tmp_path / "home")
    yield home
    home.close()


def _version(home: Home) -> str:
    with home.engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()


def test_migrations_reach_head_and_go_down_and_up_again(home: Home, catalog_backend: str) -> None:
    assert _version(home) == HEAD
    tables = set(inspect(home.engine).get_table_names())
    assert {"brands", "products", "references", "model_versions", "api_keys", "listings", "listing_serials",
            "genuine_serials", "reviews"} <= tables
    config = alembic_config(home.engine)
    for target in ("base", "head"):
        with home.engine.begin() as connection:
            config.attributes["connection"] = connection
            (command.downgrade if target == "base" else command.upgrade)(config, target)
    assert _version(home) == HEAD
    if catalog_backend == "postgresql":  # 64-bit ids, and sequences that can hand them out
        with home.engine.connect() as connection:
            types = dict(connection.execute(text(
                "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                "WHERE column_name IN ('id', 'listing_row_id') AND table_name IN ('listings', 'listing_serials', 'reviews', "
                "'listing_evidence')"
            )).all())
            sequences = dict(connection.execute(text(
                "SELECT sequencename, data_type FROM pg_sequences WHERE sequencename LIKE 'listing%'")).all())
        assert types == {"listings.id": "bigint", "listing_serials.id": "bigint",
                         "listing_serials.listing_row_id": "bigint", "reviews.listing_row_id": "bigint",
                         "reviews.id": "integer", "listing_evidence.listing_row_id": "bigint"}
        assert sequences == {"listings_id_seq": "bigint", "listing_serials_id_seq": "bigint"}
    Home(home.root).close()  # reopening an up-to-date catalog migrates nothing and does not fail


def test_listing_ids_and_hashes_use_64_bits(home: Home, catalog_backend: str) -> None:
    big = 3_000_000_000  # past 2^31
    with home.sessions.begin() as session:
        if catalog_backend == "postgresql":
            session.execute(text("SELECT setval('listings_id_seq', :n)"), {"n": big})
            session.execute(text("SELECT setval('listing_serials_id_seq', :n)"), {"n": big})
        else:
            session.add(Listing(id=big, image_sha256="0" * 64, risk=0.1, decision="pass", model_tag="t"))
            session.add(ListingSerial(id=big, listing_row_id=big, serial_hmac="f" * 64))
        extremes = [-(2**63), 2**63 - 1]
        rows = [Listing(image_sha256="1" * 64, phash=p, risk=0.5, decision="review", model_tag="t",
                        result={"risk": 0.5, "nested": {"ok": [1, 2]}}) for p in extremes]
        session.add_all(rows)
        session.flush()
        session.add(ListingSerial(listing_row_id=rows[1].id, serial_hmac="e" * 64))
    assert all(r.id > big for r in rows)
    with home.sessions() as session:
        stored = session.scalars(select(Listing).where(Listing.id > big).order_by(Listing.id)).all()
        assert [r.phash for r in stored] == extremes
        assert stored[0].result == {"risk": 0.5, "nested": {"ok": [1, 2]}}
        assert session.scalar(select(func.max(ListingSerial.listing_row_id))) == rows[1].id


def test_times_come_back_in_utc(home: Home) -> None:
    before = dt.datetime.now(dt.UTC)
    key, who = create_key(home, role=Role.PLATFORM, label="times")
    revoke_key(home, who.key_id)
    with home.sessions() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_id == who.key_id))
    for moment in (row.created_at, row.revoked_at):
        assert moment.tzinfo is not None and moment.utcoffset() == dt.timedelta(0)
        assert before - dt.timedelta(seconds=1) <= moment <= dt.datetime.now(dt.UTC)
    assert authenticate(home, key) is None  # revoked
    with pytest.raises(StatementError, match="naive datetime"), home.sessions.begin() as session:
        session.get(ApiKey, row.id).revoked_at = dt.datetime(2026, 1, 1)  # noqa: DTZ001 - the point of the test


def test_brands_keys_and_tenancy(home: Home) -> None:
    with home.sessions.begin() as session:
        add_brand(session, "God Morgon", wordmarks=["GOD MORGON"])
        add_brand(session, "Arla")
    with pytest.raises(MarkguardError, match="already exists"), home.sessions.begin() as session:
        add_brand(session, "god  MORGON")
    with home.sessions() as session:
        assert [b.name for b in list_brands(session)] == ["Arla", "God Morgon"]
        assert get_brand(session, "GOD MORGON").wordmarks == ["GOD MORGON"]
    key, who = create_key(home, role=Role.BRAND, brand="arla")
    assert authenticate(home, key) == who and who.brand_name == "Arla"
    assert authenticate(home, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    with pytest.raises(MarkguardError, match="unknown brand"):
        create_key(home, role=Role.BRAND, brand="Nope")
    with pytest.raises(MarkguardError, match="at most 200"):  # not a DataError from PostgreSQL's VARCHAR(200)
        create_key(home, role=Role.PLATFORM, label="x" * 201)


# Two processes write the same catalog at once: each adds its own brands, races the other for shared
# names (exactly one wins each), creates keys, and imports overlapping serial lists.
_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from markguard.serving.brands import add_brand
    from markguard.serving.keys import Role, create_key
    from markguard.serving.serials import import_serials
    from markguard.serving.state.home import Home
    from markguard.vision.errors import MarkguardError

    root, worker, rounds, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    home = Home(root)
    while not go.exists():
        time.sleep(0.005)
    won = 0
    for i in range(rounds):
        with home.sessions.begin() as session:  # as the API adds a brand: no lock, the unique key decides
            add_brand(session, f"Own {worker} {i}")
        try:
            with home.sessions.begin() as session:
                add_brand(session, f"Shared {i}")
            won += 1
        except MarkguardError as exc:
            assert "already exists" in str(exc), exc
        create_key(home, role=Role.BRAND, brand=f"Own {worker} {i}")
        if i % 10 == 0:  # under the home's write lock, as the CLI and the API import serials
            import_serials(home, "Acme", sys.argv[5 + (i // 10) % 2], progress=False)
    print(json.dumps({"won": won}))
    """
)


def test_two_processes_write_at_once(home: Home, tmp_path: Path) -> None:
    rounds = 40
    with home.sessions.begin() as session:
        add_brand(session, "Acme")
    home.secret()  # both workers hash serials with this home's secret
    lists = []
    for name, start in (("a.txt", 0), ("b.txt", 500)):  # 1,500 distinct serials, 500 in both lists
        path = tmp_path / name
        path.write_text("".join(f"AC{n:08d}\n" for n in range(start, start + 1000)))
        lists.append(str(path))
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(home.root), w, str(rounds), str(go), *lists],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in ("w1", "w2")
    ]
    time.sleep(2.0)  # both import and open the catalog, then start together
    go.touch()
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert "Traceback" not in err, err
    wins = [json.loads(out.splitlines()[-1])["won"] for out, _ in outputs]
    assert sum(wins) == rounds  # each shared name added exactly once
    with home.sessions() as session:
        names = list(session.scalars(select(Brand.name)))
        assert len(names) == 1 + 2 * rounds + rounds and len(set(names)) == len(names)
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 2 * rounds
        acme = get_brand(session, "Acme")
        assert session.scalar(select(func.count()).where(GenuineSerial.brand_id == acme.id)) == 1500


@pytest.mark.postgresql_only  # several hosts share a catalog only on a server
def test_fresh_catalog_opened_by_three_hosts_at_once(tmp_path: Path, database_url: str | None) -> None:
    """Three homes (three hosts) open one new PostgreSQL catalog at once: the migration runs once, none fails."""
    script = "import sys; from markguard.serving.state.home import Home; Home(sys.argv[1]).close(); print('ok')"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / f"host{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "ok", err
    home = Home(tmp_path / "check")
    assert _version(home) == HEAD
    home.close()


def test_enroll_review_and_delete_keep_catalog_and_index_in_step(home: Home, grocery: Path) -> None:
    """Enrolment, a moderator's counterfeit label (a new known-fake reference) and deletion, on each backend."""
    from markguard.serving.enroll import collect_inputs, enroll
    from markguard.serving.indexing import load_or_new
    from markguard.serving.references import delete_references
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.reviews import Review, record_review
    from markguard.serving.state.schema import Reference, ReferenceKind

    artifact = ensure_default_model(home)
    model = artifact.load_embedder(fuse=True)
    milk = grocery / "iconic" / "Packages" / "Milk"
    with home.sessions.begin() as session:
        arla = add_brand(session, "Arla").id
    report = enroll(home, artifact, model, brand="Arla", product="Arla-Standard-Milk",
                    inputs=collect_inputs(sorted((milk / "Arla-Standard-Milk").glob("*_Iconic.jpg"))))
    again = enroll(home, artifact, model, brand="Arla", product="Arla-Standard-Milk",
                   inputs=collect_inputs(sorted((milk / "Arla-Standard-Milk").glob("*_Iconic.jpg"))))
    assert len(report.added) == 1 and again.added == [] and len(again.duplicates) == 1
    fake = sorted((grocery / "val" / "Packages" / "Milk" / "Arla-Standard-Milk").glob("*.jpg"))[0].read_bytes()
    with home.sessions.begin() as session:
        session.add(Listing(listing_id="L-1", brand_id=arla, image_sha256=home.put_blob(fake), risk=0.9,
                            decision="takedown", model_tag=artifact.tag))
    review = record_review(home, artifact, model, listing_id="L-1", label=ReferenceKind.COUNTERFEIT,
                           reviewer_key_id="k" * 16, note="seen before")
    assert review.reference_id is not None and review.brand == "Arla"
    with home.sessions() as session:
        kinds = dict(session.execute(select(Reference.id, Reference.kind)).all())
        assert kinds == {report.added[0]: ReferenceKind.GENUINE, review.reference_id: ReferenceKind.COUNTERFEIT}
        assert session.get(Review, review.review_id).note == "seen before"
    assert sorted(load_or_new(home, artifact).ids.tolist()) == sorted(kinds)
    assert delete_references(home, brand="Arla", ids=[report.added[0]]) == [report.added[0]]
    with pytest.raises(MarkguardError, match="no reference"):
        delete_references(home, brand="Arla", ids=[report.added[0]])
    assert load_or_new(home, artifact).ids.tolist() == [review.reference_id]


def test_a_genuine_review_adds_a_genuine_reference_only_where_the_brand_allows(home: Home, grocery: Path) -> None:
    """Item 5 of issue 15: a genuine review removes the counterfeit reference an earlier review made, and
    adds the photo as a genuine reference only when the brand opted in (`genuine_from_reviews`)."""
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.reviews import list_reviews, record_review
    from markguard.serving.state.schema import Reference, ReferenceKind

    artifact = ensure_default_model(home)
    model = artifact.load_embedder(fuse=True)
    photos = sorted((grocery / "val" / "Packages" / "Milk" / "Arla-Standard-Milk").glob("*.jpg"))[:2]
    with home.sessions.begin() as session:
        arla = add_brand(session, "Arla")
        for i, photo in enumerate(photos):
            session.add(Listing(listing_id=f"G-{i}", brand_id=arla.id, image_sha256=home.put_blob(photo.read_bytes()),
                                risk=0.5, decision="review", model_tag=artifact.tag))

    def kinds(listing: str) -> list[ReferenceKind]:
        with home.sessions() as session:
            sha = session.scalar(select(Listing.image_sha256).where(Listing.listing_id == listing))
            return list(session.scalars(select(Reference.kind).where(Reference.sha256 == sha)))

    for i, allowed in enumerate((False, True)):
        with home.sessions.begin() as session:
            get_brand(session, "Arla").genuine_from_reviews = allowed
        fake = record_review(home, artifact, model, listing_id=f"G-{i}", label=ReferenceKind.COUNTERFEIT,
                             reviewer_key_id="m" * 16)
        assert kinds(f"G-{i}") == [ReferenceKind.COUNTERFEIT]
        undo = record_review(home, artifact, model, listing_id=f"G-{i}", label=ReferenceKind.GENUINE,
                             reviewer_key_id="n" * 16, note="brand confirmed")
        assert undo.removed_reference_id == fake.reference_id
        assert (undo.reference_id is not None) == allowed
        assert kinds(f"G-{i}") == ([ReferenceKind.GENUINE] if allowed else [])
        kept = list_reviews(home, listing_id=f"G-{i}", brand_id=None, after=0, limit=10)
        assert [(r.label, r.reviewer, r.note) for r in kept] == [
            ("counterfeit", "m" * 16, ""), ("genuine", "n" * 16, "brand confirmed")]
        assert all(r.created_at for r in kept)


def test_a_genuine_and_a_counterfeit_review_at_once_take_turns(home: Home, grocery: Path, monkeypatch) -> None:
    """Two moderators label one listing at the same moment, one genuine, one counterfeit, after an earlier
    counterfeit review. Each review reads what earlier reviews made of the photo and moves it; held at the
    point right after that reading until the other arrives (or 3 s pass), they would both act on one
    reading. Under the photo's lock they never overlap: both succeed (no 404 "has no reference"), and the
    photo ends as the later review says, with exactly its reference."""
    import threading

    from markguard.serving import reviews
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.schema import Reference, ReferenceKind

    artifact = ensure_default_model(home)
    model = artifact.load_embedder(fuse=True)
    photo = sorted((grocery / "val" / "Packages" / "Milk" / "Arla-Standard-Milk").glob("*.jpg"))[0].read_bytes()
    with home.sessions.begin() as session:
        arla = add_brand(session, "Arla")
        arla.genuine_from_reviews = True
        session.add(Listing(listing_id="L-1", brand_id=arla.id, image_sha256=home.put_blob(photo), risk=0.9,
                            decision="takedown", model_tag=artifact.tag))
    first = reviews.record_review(home, artifact, model, listing_id="L-1", label=ReferenceKind.COUNTERFEIT,
                                  reviewer_key_id="a" * 16)
    assert first.reference_id is not None

    barrier, overlapped = threading.Barrier(2, timeout=3.0), []
    read = reviews._made_by_reviews

    def read_then_wait(*args):  # noqa: ANN202
        made = read(*args)
        try:
            barrier.wait()
            overlapped.append(True)
        except threading.BrokenBarrierError:
            pass
        return made

    monkeypatch.setattr(reviews, "_made_by_reviews", read_then_wait)
    results, errors = {}, []

    def review(label: ReferenceKind) -> None:
        try:
            results[label] = reviews.record_review(home, artifact, model, listing_id="L-1", label=label,
                                                   reviewer_key_id=label.value[:16].ljust(16, "x"))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=review, args=(k,)) for k in (ReferenceKind.GENUINE, ReferenceKind.COUNTERFEIT)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and len(results) == 2 and not overlapped
    earlier, later = sorted(results.values(), key=lambda r: r.review_id)
    with home.sessions() as session:
        refs = dict(session.execute(select(Reference.id, Reference.kind).where(
            Reference.sha256 == session.get(Listing, 1).image_sha256)).all())
    assert refs == {later.reference_id: ReferenceKind(later.label)}  # the later word stands, with its reference
    assert later.removed_reference_id == earlier.reference_id  # and it undid the earlier one's
    assert earlier.removed_reference_id == first.reference_id or earlier.label == first.label


def test_migration_0009_bands_the_hashes_already_stored(home: Home, catalog_backend: str) -> None:
    """Rows written before the bands existed get them from the migration, as `band_keys` computes them."""
    config = alembic_config(home.engine)
    with home.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0008")
    hashes = [-(2**63), 2**63 - 1, -1, 0, 0x0123456789ABCDEF, -0x0123456789ABCDEF, None]
    with home.engine.begin() as connection:
        listings = sa.Table("listings", sa.MetaData(), autoload_with=connection)
        assert "phash_b0" not in listings.c
        connection.execute(sa.insert(listings), [
            {"image_sha256": "2" * 64, "phash": h, "risk": 0.5, "decision": "pass", "model_tag": "t", "result": {},
             "scored_at": dt.datetime.now(dt.UTC)} for h in hashes])
    with home.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    with home.sessions() as session:
        stored = session.execute(select(Listing.phash, Listing.phash_b0, Listing.phash_b1, Listing.phash_b2)
                                 .where(Listing.image_sha256 == "2" * 64).order_by(Listing.id)).all()
    assert [tuple(r) for r in stored] == [(h, *(band_keys(h) if h is not None else (None,) * 3)) for h in hashes]


def test_near_duplicate_search_finds_what_a_full_scan_finds(home: Home, catalog_backend: str) -> None:
    """`CatalogEvidence.duplicates` (indexed band lookups) against a Hamming scan of every stored hash: the
    same listings, with copies whose differing bits fall in one band, spread over all three, or 9 bits away."""
    rng = np.random.default_rng(3)
    query = PerceptualHash(int(rng.integers(0, 2**63)) * 2 + 1)
    copies = {"same": 0, "spread-8": 0b111 | 0b111 << 21 | 0b11 << 42, "one-band-8": 0xFF << 50,
              "spread-9": 0b111 | 0b111 << 21 | 0b111 << 42, "one-band-9": 0x1FF << 30}
    stored = {name: PerceptualHash(query.value ^ flips).int64 for name, flips in copies.items()}
    stored |= {f"random-{i}": int(h) for i, h in enumerate(rng.integers(-(2**63), 2**63 - 1, 3000, dtype=np.int64))}
    with home.sessions.begin() as session:
        session.add_all(Listing(listing_id=name, image_sha256="3" * 64, phash=h, risk=0.1, decision="pass",
                                model_tag="t") for name, h in stored.items())
    truth = {name for name, h in stored.items() if hamming(query, h) <= 8}
    assert {"same", "spread-8", "one-band-8"} <= truth and not {"spread-9", "one-band-9"} & truth
    found, total = CatalogEvidence(home).duplicates(query.int64, listing=None)
    assert {d["listing_id"] for d in found} == truth and total == len(truth)
    assert CatalogEvidence(home).duplicates(query.int64, listing="same")[1] == len(truth) - 1  # itself is not reuse


def test_the_migrations_build_exactly_the_tables_the_code_declares(home: Home, catalog_backend: str) -> None:
    """Alembic's comparison of the migrated catalog with every model the code declares finds nothing: a model
    change without its migration (or the reverse) fails here, not on a customer's upgrade."""
    import markguard.serving.console.sessions
    import markguard.serving.intelligence.tables
    import markguard.serving.listings
    import markguard.serving.reviews  # noqa: F401  (each declares tables on the shared metadata)
    from markguard.serving.state.schema import Base

    with home.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    # PostgreSQL's rate-limit counters are a table of serving.ratelimit's own (tests/serving/test_rate_limits.py)
    assert [d for d in differences if not (d[0] == "remove_table" and d[1].name == "markguard_rate_limits")] == []


def test_processes_opening_a_fresh_sqlite_file_together_all_switch_it_to_wal(tmp_path):
    """Switching a new file to WAL escalates a shared lock, and SQLite answers "database is locked" at once
    to one of two connections doing it together (no busy handler: it would deadlock). Two service workers
    starting on a fresh home lost one that way (CI: the rate-limit counters' file). Here 4 connections race
    on each of 60 fresh files; without the retry about 1 in 30 failed."""
    import sqlite3
    import threading

    from markguard.serving.state.catalog import sqlite_wal

    errors: list[Exception] = []
    for i in range(60):
        path, start = tmp_path / f"{i}.sqlite", threading.Barrier(4)

        def race(path=path, start=start) -> None:
            connection = sqlite3.connect(path, timeout=10, check_same_thread=False)
            cursor = connection.cursor()
            cursor.execute("PRAGMA busy_timeout=10000")
            start.wait()
            try:
                sqlite_wal(cursor)
                assert cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            except (sqlite3.OperationalError, AssertionError) as exc:
                errors.append(exc)
            finally:
                connection.close()

        threads = [threading.Thread(target=race) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
