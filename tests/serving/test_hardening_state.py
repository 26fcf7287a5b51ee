"""Hardening of the state and its edges (issue 20, findings 3, 5, 6): a commit that fails leaves a server
that answers; serial import is one transaction; ids, error bodies and reference sources leak nothing;
debris is swept; the home is private; a score's `duplicates` is bounded."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from markguard.serving.brands import add_brand
from markguard.serving.cli import main
from markguard.serving.serials import import_serials
from markguard.serving.state.home import Home
from markguard.serving.state.schema import GenuineSerial, Listing, Reference
from markguard.vision.decode import decode_image
from markguard.vision.errors import MarkguardError


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home(tmp_path / "home")
    with home.sessions.begin() as session:
        add_brand(session, "Acme")
    return home


def _serials(home: Home) -> int:
    with home.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(GenuineSerial)))


# -- serial import: one transaction, clear errors (finding 5) ---------------------------------------------
@pytest.mark.parametrize(("bad", "error"), [
    (b"AB\rCD,1\n", r"line 503: malformed CSV \(new-line character seen in unquoted field\)"),
    (b'"' + b"A" * 140_000 + b'"\n', "line 503: longer than 65536 bytes"),  # one line over the csv module's limit
    (b'"' + (b"A" * 60_000 + b"\n") * 3 + b'"\n', r"line \d+: malformed CSV \(field larger than field limit"),
    (b"Z" * 300 + b"\n", "line 503: a serial longer than 200 characters"),
])
def test_serial_import_keeps_nothing_of_a_bad_file(home: Home, tmp_path: Path, monkeypatch, bad, error) -> None:
    from markguard.serving import serials

    monkeypatch.setattr(serials, "CHUNK", 50)  # ten chunks before the bad line: none may stay
    path = tmp_path / "s.csv"
    path.write_bytes(b"serial,n\n" + b"".join(b"AB%08d,1\n" % i for i in range(500)) + b"ok,2\n" + bad)
    with pytest.raises(MarkguardError, match=f"^{error}"):
        import_serials(home, "Acme", path, progress=False)
    assert _serials(home) == 0


def test_serial_import_cli_is_one_line_and_exit_2(home: Home, tmp_path: Path, capsys) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(b"serial\nAB12345678\nAB\rCD\n")
    assert main(["serials", "import", "Acme", str(path), "--home", str(home.root)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("markguard: error: line 3: malformed CSV") and "Traceback" not in err
    assert _serials(home) == 0
    path.write_bytes(b"AB12345678\n" + b"X" * 70_000 + b"\n")  # a text file with a line no serial has
    assert main(["serials", "import", "Acme", str(path), "--home", str(home.root)]) == 2
    assert "line 2: longer than" in capsys.readouterr().err and _serials(home) == 0


# -- a private home (finding 6) -------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_home_is_private(tmp_path: Path) -> None:
    from markguard.vision.index import ReferenceIndex

    home = Home(tmp_path / "new")
    sha = home.put_blob(b"brand's unreleased packaging")
    ReferenceIndex(4).save(home.index_dir("m"))
    home.secret()
    with home.write_lock():
        pass
    assert _mode(home.root) == 0o700
    for sub in ("blobs", "index", "models", f"blobs/{sha[:2]}", "index/m"):
        assert _mode(home.root / sub) == 0o700, sub
    for path in [home.root / "catalog.sqlite", home.root / "write.lock", home.blob_path(sha),
                 *(home.root / "index" / "m").iterdir()]:
        assert _mode(path) == 0o600, path
    old = tmp_path / "old"  # a home made before, world-readable: tightened when opened
    old.mkdir(mode=0o755)
    (old / "catalog.sqlite").touch(mode=0o644)
    os.chmod(old, 0o755)
    Home(old)
    assert _mode(old) == 0o700 and _mode(old / "catalog.sqlite") == 0o600


# -- the sweeper (finding 6) ----------------------------------------------------------------------------
def test_sweep_collects_old_debris_and_nothing_in_flight(home: Home, capsys) -> None:
    import datetime as dt

    from markguard.serving.console.sessions import RevokedSession
    from markguard.serving.state.sweep import sweep
    from markguard.vision.index import ReferenceIndex

    old = time.time() - 7200
    orphan, young, listed = home.put_blob(b"orphan"), home.put_blob(b"young"), home.put_blob(b"listed")
    with home.sessions.begin() as session:
        session.add(Listing(image_sha256=listed, risk=0.1, decision="pass", model_tag="m"))
    stale_tmp = home.root / "blobs" / ".x.123.tmp"
    fresh_tmp = home.root / "blobs" / ".y.456.tmp"
    stale_tmp.write_bytes(b"half")
    fresh_tmp.write_bytes(b"in flight")
    index = ReferenceIndex(4)
    for _ in range(3):
        index.save(home.index_dir("m"))
    stray = home.index_dir("m") / "index-1.faiss"  # a version a killed save left behind
    stray.write_bytes(b"x")
    for path in (home.blob_path(orphan), home.blob_path(listed), stale_tmp, stray):
        os.utime(path, (old, old))
    now = dt.datetime.now(dt.UTC)
    with home.sessions.begin() as session:  # signed out: one token has expired since, one still would work
        for nonce, hours in (("expired", -1), ("live", 1)):
            session.add(RevokedSession(nonce=nonce, key_id="k", revoked_at=now,
                                       expires_at=now + dt.timedelta(hours=hours)))
    report = sweep(home, min_age_s=3600)
    assert (report.tmp_files, report.blobs, report.index_files, report.revoked_sessions) == (1, 1, 1, 1)
    with home.sessions() as session:
        assert session.scalars(select(RevokedSession.nonce)).all() == ["live"]
    assert not home.blob_path(orphan).exists() and not stale_tmp.exists() and not stray.exists()
    assert home.blob_path(young).exists() and home.blob_path(listed).exists() and fresh_tmp.exists()
    assert ReferenceIndex.load(home.index_dir("m")).version == 3
    assert main(["home", "sweep", "--min-age", "0", "--home", str(home.root)]) == 0
    assert '"blobs": 1' in capsys.readouterr().out and not home.blob_path(young).exists()


# -- error text (finding 6) -----------------------------------------------------------------------------
def test_public_messages_hide_paths_addresses_and_long_echoes() -> None:
    from markguard.serving.enroll import public_label
    from markguard.serving.redact import MAX_MESSAGE, public_message

    assert public_message("refs.zip: /tmp/tmpq1w2/upload.zip: no images") == "refs.zip: upload.zip: no images"
    assert "0x" not in public_message("cannot identify image file <_io.BytesIO object at 0x7f3a2c1b>")
    long = public_message(f"unknown brand {'x' * 10_000!r}")
    assert len(long) < 100 and long.startswith("unknown brand 'xxx") and long.endswith("…'")
    assert len(public_message("y" * 5000)) == MAX_MESSAGE
    assert public_message("images[1]: a/b.jpg is not a JPEG") == "images[1]: a/b.jpg is not a JPEG"
    assert public_label("/srv/keys/acme/front.jpg") == "front.jpg"
    assert public_label("/srv/keys/acme/refs.zip!a/b.jpg") == "refs.zip!a/b.jpg"
    assert public_label("C:\\keys\\front.jpg") == "front.jpg"


def test_decode_errors_name_no_heap_address() -> None:
    from markguard.vision.decode import decode_image

    for data in (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"\xff\xd8\xff" + b"\0" * 64):
        with pytest.raises(MarkguardError) as info:
            decode_image(data)
        assert " at 0x" not in str(info.value)


def test_reference_ids_beyond_64_bits_are_refused_by_the_cli(home: Home) -> None:
    with pytest.raises(SystemExit) as info:
        main(["reference", "delete", "Acme", str(2**63), "--home", str(home.root)])
    assert info.value.code == 2


# -- against a live engine and API ----------------------------------------------------------------------
class Live:
    def __init__(self, root: Path, keys: dict[str, str], photos: list[Path]) -> None:
        from markguard.serving.api import Backend, build_app, local_embed
        from markguard.serving.engine import ScoringEngine
        from markguard.serving.limits import GuardMiddleware, RateLimiter

        self.home = Home(root)
        self.engine = ScoringEngine(self.home, ocr=False)
        backend = Backend(engine=self.engine, embed=local_embed(self.engine), limiter=RateLimiter(rate=1e4, burst=10**4))
        self.client = TestClient(GuardMiddleware(build_app(backend)), raise_server_exceptions=False)
        self.keys, self.photos = keys, [p.read_bytes() for p in photos]

    def call(self, method: str, path: str, key: str, **kwargs):  # noqa: ANN201
        r = self.client.request(method, path, headers={"Authorization": f"Bearer {self.keys[key]}"}, **kwargs)
        assert r.status_code < 500, r.text
        return r

    def score(self, i: int = 0, **fields: str) -> dict:
        r = self.call("POST", "/v1/score", "platform", files={"image": ("p.jpg", self.photos[i], "image/jpeg")},
                      data=fields)
        assert r.status_code == 200, r.text
        return r.json()

    def catalog(self) -> dict[int, int]:
        with self.home.sessions() as session:
            return dict(session.execute(select(Reference.id, Reference.brand_id)).all())

    def assert_consistent(self) -> None:
        """The live index holds exactly the catalog's references, each under its brand."""
        self.engine.refresh()
        indexed = {int(i): int(b) for i, b in zip(self.engine.index.ids, self.engine.index.brand_ids, strict=True)}
        assert indexed == self.catalog()
        for i in range(len(self.photos)):
            assert all(m["reference_id"] in indexed for m in self.score(i, brand="Oatly")["matches"])


@pytest.fixture(scope="module")
def live(api_home, tmp_path_factory) -> Live:  # noqa: ANN001
    root = tmp_path_factory.mktemp("hardening") / "home"
    shutil.copytree(api_home.root, root)
    return Live(root, api_home.keys, api_home.photos)


@pytest.fixture(scope="module")
def spare(grocery: Path):  # noqa: ANN201
    return iter(sorted((grocery / "train").rglob("Oatly-*.jpg"))[60:])


def _enroll(live: Live, paths: list[Path], brand: str = "Oatly") -> list[int]:
    from markguard.serving.enroll import collect_inputs, enroll

    return enroll(live.home, live.engine.artifact, live.engine.model, brand=brand, inputs=collect_inputs(paths)).added


def test_a_failed_catalog_commit_changes_nothing(live: Live, spare, monkeypatch) -> None:
    """Finding 3: a locked database or a full disk at the commit leaves catalog and index as they were."""
    from sqlalchemy.orm import Session

    before, version = live.catalog(), live.engine.index.version

    def locked(self) -> None:  # noqa: ANN001
        raise OperationalError("COMMIT", {}, Exception("database is locked"))

    from markguard.serving.references import delete_references

    victim = max(i for i, b in before.items() if b == 1)
    with monkeypatch.context() as patch:
        patch.setattr(Session, "commit", locked)
        with pytest.raises(OperationalError):
            _enroll(live, [next(spare)])
        with pytest.raises(OperationalError):
            delete_references(live.home, brand="Oatly", ids=[victim])
    assert live.catalog() == before
    live.assert_consistent()
    assert live.engine.index.version == version


def test_an_index_save_that_fails_after_the_commit_is_repaired(live: Live, spare, monkeypatch) -> None:
    """The commit is the write: a full disk at the index save still answers the enroll, and the live
    engine serves the new references from the catalog."""
    from markguard.vision.index import ReferenceIndex

    def full(self, directory, **kwargs) -> int:  # noqa: ANN001
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(ReferenceIndex, "save", full)
        added = _enroll(live, [next(spare)])
        assert added and set(added) <= set(live.catalog())
        live.assert_consistent()  # rebuilt in memory: the disk is still full
    live.engine.index.extra = {}  # forget the in-memory repair: the saved index must come right too
    live.assert_consistent()


def test_an_id_handed_out_again_is_reindexed(live: Live, spare) -> None:
    """A delete killed after its commit, then an insert that got the same id: the old vector goes."""
    from markguard.serving.enroll import collect_inputs

    live.engine.refresh()
    victim = max(live.catalog())
    new = next(spare)
    data = collect_inputs([new])[0].data
    sha = live.home.put_blob(data)
    with live.home.sessions.begin() as session:  # as the two writers left it: no index write after either
        row = session.get(Reference, victim)
        brand_id, kind = row.brand_id, row.kind
        session.delete(row)
        session.flush()
        session.add(Reference(id=victim, brand_id=brand_id, kind=kind, sha256=sha, width=1, height=1, source="x.jpg"))
    live.assert_consistent()
    expected = live.engine.embed([decode_image(data)])[0]
    assert np.allclose(live.engine.index.vectors(np.array([victim]))[0], expected, atol=1e-4)


def test_deleting_a_reference_deletes_its_blob_unless_still_used(live: Live, spare) -> None:
    path = next(spare)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    oatly, arla = _enroll(live, [path], "Oatly")[0], _enroll(live, [path], "Arla")[0]
    assert live.call("DELETE", f"/v1/brands/Oatly/references/{oatly}", "oatly").status_code == 200
    assert live.home.blob_path(sha).exists()  # Arla's reference still shows it
    assert live.call("DELETE", f"/v1/brands/Arla/references/{arla}", "arla").status_code == 200
    assert not live.home.blob_path(sha).exists()
    live.assert_consistent()


@pytest.mark.parametrize("ref", [2**63 - 1, 2**63, 2**64, -1, 0])
def test_reference_ids_beyond_64_bits_are_4xx(live: Live, ref: int) -> None:
    r = live.call("DELETE", f"/v1/brands/Oatly/references/{ref}", "oatly")
    assert r.status_code == (404 if ref == 2**63 - 1 else 422)
    assert live.call("GET", f"/v1/brands/Oatly/references?after={ref}", "oatly").status_code in (200, 422)


def test_error_bodies_and_reference_lists_leak_no_paths(live: Live, api_home) -> None:
    with live.home.sessions.begin() as session:  # a row enrolled before sources were trimmed
        session.execute(text("UPDATE \"references\" SET source = '/srv/acme/keys/front.jpg' WHERE id = "
                             f"{api_home.references['Oatly'][0]}"))
    refs = live.call("GET", "/v1/brands/Oatly/references", "oatly").json()["references"]
    assert refs and all("/" not in r["source"].split("!")[0] for r in refs)
    assert "front.jpg" in {r["source"] for r in refs}
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("notes.txt", "no images")
    bodies = [
        live.call("POST", "/v1/brands/Oatly/references", "oatly", files={"files": ("refs.zip", empty.getvalue())}).text,
        live.call("POST", "/v1/brands/Oatly/references", "oatly",
                  files={"files": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64)}).text,
        live.call("GET", f"/v1/brands/{'b' * 5000}/references", "admin").text,
    ]
    for body in bodies:
        assert "/tmp" not in body and " at 0x" not in body and len(body) < 600, body


def test_serial_import_over_http_is_422_and_atomic(live: Live) -> None:
    def count() -> int:
        with live.home.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(GenuineSerial)))

    before = count()
    body = b"serial\n" + b"".join(b"AR%08d\n" % i for i in range(30_000)) + b"AR\rX\n"
    r = live.call("POST", "/v1/brands/Arla/serials", "arla", files={"file": ("s.csv", body)})
    assert r.status_code == 422 and r.json()["detail"].startswith("line 30002: malformed CSV")
    assert count() == before
    r = live.call("POST", "/v1/brands/Arla/serials", "arla", files={"file": ("s.csv", b"serial\n" + b"x" * 140_000)})
    assert r.status_code == 422 and count() == before


def test_duplicates_are_capped_at_the_newest(live: Live) -> None:
    cap = 20  # serving.engine.MAX_DUPLICATES
    from markguard.vision.phash import phash

    value = phash(decode_image(live.photos[1])).int64
    earlier = live.score(1, listing_id="D-new")["duplicates_total"]  # other tests' listings of the photo
    with live.home.sessions.begin() as session:
        for i in range(cap + 15):
            session.add(Listing(listing_id=f"D-{i}", seller_id="s", image_sha256="0" * 64, phash=value, risk=0.5,
                                decision="review", model_tag="m"))
    scored = live.score(1, listing_id="D-new")
    dupes = scored["duplicates"]
    assert len(dupes) == cap and scored["duplicates_total"] == earlier + cap + 15  # the cap hides no count
    assert dupes[-1]["listing_id"] == f"D-{cap + 14}" and "D-0" not in {d["listing_id"] for d in dupes}
