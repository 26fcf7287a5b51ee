"""One brand's serial import does not hold the catalog (finding: another brand's `/score` waited for the
whole file, then failed with 500 "database is locked"). The file is checked and hashed before anything is
written, then written in short transactions: another brand's score goes between them. All or nothing is
kept: the rows count once the import is marked finished, an error part-way removes them, and a killed
import's rows never count and go with the brand's next import. A request that still meets a locked
catalog answers 503 with `Retry-After`.

Each test stops the import between two of its writes (the second chunk's insert, before it runs) and
acts there, so nothing depends on timing.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from starlette.testclient import TestClient

from markguard.serving import serials

SERIALS = 500
CHUNK = 50  # ten chunks


@pytest.fixture(scope="module")
def shome(api_home, tmp_path_factory):
    from markguard.serving.state.home import Home

    root = tmp_path_factory.mktemp("serial-lock") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    home = Home(root)
    yield home
    home.close()


@pytest.fixture(scope="module")
def client(shome):
    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import GuardMiddleware, RateLimiter

    engine = ScoringEngine(shome, ocr=False)
    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000))
    return TestClient(GuardMiddleware(build_app(backend)), raise_server_exceptions=False)


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(serials, "CHUNK", CHUNK)


def _file(tmp_path: Path, prefix: str, count: int = SERIALS) -> Path:
    path = tmp_path / f"{prefix}.txt"
    path.write_text("".join(f"{prefix}{i:06d}\n" for i in range(count)))
    return path


def _stop_at_second_chunk(monkeypatch, then: Callable[[], None]) -> None:
    """Run `then` where the import is about to insert its second chunk."""
    insert, calls = serials._insert_ignoring_duplicates, []

    def insert_after(session, rows) -> None:  # noqa: ANN001
        calls.append(len(rows))
        if len(calls) == 2:
            then()
        insert(session, rows)

    monkeypatch.setattr(serials, "_insert_ignoring_duplicates", insert_after)


def _score_arla(client: TestClient, api_home, listing_id: str):  # noqa: ANN001, ANN202
    return client.post("/v1/score", headers={"Authorization": f"Bearer {api_home.keys['platform']}"},
                       files={"image": ("p.jpg", api_home.photos[2].read_bytes(), "image/jpeg")},
                       data={"brand": "Arla", "listing_id": listing_id})


def _count(home, brand: str) -> int:  # noqa: ANN001
    from markguard.serving.brands import get_brand
    from markguard.serving.state.schema import GenuineSerial

    with home.sessions() as session:
        brand_id = get_brand(session, brand).id
        return int(session.scalar(select(func.count()).where(GenuineSerial.brand_id == brand_id)))


def test_another_brands_score_succeeds_while_an_import_writes(client, api_home, shome, tmp_path, monkeypatch):
    reached, go = threading.Event(), threading.Event()

    def pause() -> None:
        reached.set()
        assert go.wait(120)

    _stop_at_second_chunk(monkeypatch, pause)
    done = {}

    def upload() -> None:
        with _file(tmp_path, "OA").open("rb") as fh:
            done["r"] = client.post("/v1/brands/Oatly/serials", headers={"Authorization": f"Bearer {api_home.keys['oatly']}"},
                                    files={"file": ("serials.txt", fh, "text/plain")})

    before = _count(shome, "Oatly")
    importer = threading.Thread(target=upload)
    importer.start()
    try:
        assert reached.wait(120), "the import never reached its second chunk"
        r = _score_arla(client, api_home, "arla-during-import")
        assert r.status_code == 200, r.text  # was: waited for the whole import, then 500 "database is locked"
        assert r.json()["brand"]["name"] == "Arla"
    finally:
        go.set()
        importer.join(120)
    assert done["r"].status_code == 200, done["r"].text
    assert done["r"].json()["added"] == SERIALS
    assert _count(shome, "Oatly") == before + SERIALS


def _registered(home, texts: list[str]) -> set[bool | None]:  # noqa: ANN001
    from markguard.serving.brands import get_brand
    from markguard.serving.serials import serial_records

    with home.sessions() as session:
        brand_id = get_brand(session, "Arla").id
        return {r.registered for r in serial_records(session, home, brand_id=brand_id, normalized=texts)}


def test_an_imports_serials_count_only_once_it_has_finished(shome, tmp_path, monkeypatch):
    from markguard.serving.serials import import_serials

    import_serials(shome, "Arla", _file(tmp_path, "AV", 20), progress=False)  # a registry to look in
    wanted = [f"AW{i:06d}" for i in range(SERIALS)]
    seen: list[set[bool | None]] = []
    _stop_at_second_chunk(monkeypatch, lambda: seen.append(_registered(shome, wanted)))
    report = import_serials(shome, "Arla", _file(tmp_path, "AW"), progress=False)
    assert report.added == SERIALS
    assert seen == [{False}]  # a chunk is written, but none counts before the import ends: as before it began
    assert _registered(shome, wanted) == {True} and _registered(shome, ["ZZ999999"]) == {False}


def test_an_error_part_way_deletes_only_what_the_import_added(shome, tmp_path, monkeypatch):
    from markguard.serving.serials import import_serials

    earlier = _file(tmp_path, "AE", 120)
    import_serials(shome, "Arla", earlier, progress=False)
    before = _count(shome, "Arla")

    def fail() -> None:
        raise RuntimeError("the disk is full")

    _stop_at_second_chunk(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="disk is full"):
        import_serials(shome, "Arla", _file(tmp_path, "AE"), progress=False)  # the 120 again, and 380 new
    assert _count(shome, "Arla") == before  # the 380 it added are gone, the 120 registered before stay
    assert not list((shome.root / "imports").glob("*.scratch"))


def test_a_killed_imports_rows_never_count_and_go_with_the_next_import(shome, tmp_path, monkeypatch):
    """As a SIGKILL leaves it (`test_fault_injection` kills a real one): rows written, the import never
    marked finished, nothing removed."""
    from markguard.serving.brands import get_brand
    from markguard.serving.serials import import_serials, registered_serials

    with shome.sessions() as session:
        brand_id = get_brand(session, "Arla").id
        counted = registered_serials(session, brand_id)

    class Killed(BaseException):
        pass

    def killed() -> None:
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(serials, "_remove", lambda home, import_id: None)  # a killed process cleans nothing up
        _stop_at_second_chunk(m, killed)
        with pytest.raises(Killed):
            import_serials(shome, "Arla", _file(tmp_path, "AK"), progress=False)
    with shome.sessions() as session:
        assert registered_serials(session, brand_id) == counted  # the first chunk is in the table, not counted
    assert _count(shome, "Arla") == counted + CHUNK
    assert _registered(shome, ["AK000000"]) == {False}
    report = import_serials(shome, "Arla", _file(tmp_path, "AK", 10), progress=False)
    assert report.added == 10
    with shome.sessions() as session:
        assert registered_serials(session, brand_id) == _count(shome, "Arla") == counted + 10


@pytest.mark.sqlite_only  # holds SQLite's write lock from another connection
def test_a_locked_catalog_answers_503_with_retry_after(client, api_home, shome):
    """Another process holds the catalog's write lock past the wait (shortened here from 30 s)."""
    def short_wait(dbapi_connection, _record) -> None:  # noqa: ANN001
        dbapi_connection.execute("PRAGMA busy_timeout=200")

    event.listen(shome.engine, "connect", short_wait)
    shome.engine.dispose()
    holder = sqlite3.connect(shome.root / "catalog.sqlite", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        r = _score_arla(client, api_home, "arla-locked")
        assert r.status_code == 503, r.text  # was: 500
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"] == "busy" and int(r.headers["retry-after"]) > 0
        holder.execute("ROLLBACK")
        assert _score_arla(client, api_home, "arla-unlocked").status_code == 200
    finally:
        holder.close()
        event.remove(shome.engine, "connect", short_wait)
        shome.engine.dispose()
