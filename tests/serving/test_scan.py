"""`markguard scan`: real model, real index, real worker processes and a real local Ray instance."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from markguard.serving.cli import main
from markguard.serving.scan import ScanSettings, run_scan
from markguard.serving.scan.feed import count_rows, read_chunks
from markguard.serving.scan.journal import Journal
from markguard.serving.scan.worker import DoneMap

REPO = Path(__file__).resolve().parents[2]


def _copy_without_listings(source: Path, root: Path) -> Path:
    """A private copy of a home with its references and keys but none of the listings other tests scored
    into it (the API tests share `api_home`): these tests count the listings a scan records."""
    from sqlalchemy import delete

    from markguard.serving.reviews import Review
    from markguard.serving.state.home import Home as _Home
    from markguard.serving.state.schema import Listing, ListingSerial

    shutil.copytree(source, root)
    home = _Home(root)
    with home.sessions.begin() as session:
        for table in (Review, ListingSerial, Listing):
            session.execute(delete(table))
    home.close()
    return root


@pytest.fixture()
def home(api_home, tmp_path: Path) -> Path:
    """A private copy of the API tests' home (Oatly and Arla enrolled, no listings): scans record listings."""
    return _copy_without_listings(api_home.root, tmp_path / "home")


def _val(grocery: Path, brand: str) -> list[Path]:
    return sorted((grocery / "val").rglob(f"{brand}-*.jpg")) + sorted((grocery / "train").rglob(f"{brand}-*.jpg"))


def _good_rows(grocery: Path, n: int) -> list[dict]:
    """`n` real photos: Oatly and Arla listings, half with the true brand, half claiming the other."""
    photos = [p for pair in zip(_val(grocery, "Oatly"), _val(grocery, "Arla"), strict=False) for p in pair][:n]
    rows = []
    for i, p in enumerate(photos):
        brand = p.name.split("-")[0]
        claim = brand if i % 2 == 0 else {"Oatly": "Arla", "Arla": "Oatly"}[brand]
        rows.append({"listing_id": f"L{i:03d}", "seller_id": f"S{i % 3}", "brand": claim, "product": None,
                     "title": f"listing {i}", "image": str(p)})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _results(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_id = {r["listing_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a listing appears twice in the results"
    return by_id


def _catalog(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "catalog.sqlite") as db:
        return db.execute("SELECT listing_id, image_sha256, risk, decision, model_tag, phash, result, brand_id"
                          " FROM listings ORDER BY id").fetchall()


def test_bad_rows_are_reported_and_good_rows_scored_with_ocr(home, grocery, tmp_path):
    good = _good_rows(grocery, 3)  # OCR on: the scan's full path
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(Path(good[0]["image"]).read_bytes()[:600])
    shutil.copy(good[1]["image"], tmp_path / "relative.jpg")
    bad = [
        {"listing_id": "corrupt", "brand": "Oatly", "image": "corrupt.jpg"},
        {"listing_id": "missing", "brand": "Oatly", "image": "nope/missing.jpg"},
        {"listing_id": "unknown-brand", "brand": "Nobrand", "image": good[0]["image"]},
        {"listing_id": "url", "brand": "Oatly", "image": "https://example.com/a.jpg"},
        {"listing_id": None, "brand": "Oatly", "image": good[0]["image"]},
    ]
    rows = good[:1] + bad[:2] + good[1:2] + bad[2:] + [{**good[2], "image": "relative.jpg"}]
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows)
    out = tmp_path / "out"
    assert main(["scan", str(feed), "--out", str(out), "--home", str(home), "--workers", "1", "--quiet",
                 "--ocr-every-photo"]) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == len(rows)
    results = {r["listing_id"]: r for r in lines}
    for r in good:
        assert results[r["listing_id"]]["status"] == "scored" and results[r["listing_id"]]["error"] is None
        assert results[r["listing_id"]]["decision"] in ("pass", "review", "takedown")
        assert isinstance(results[r["listing_id"]]["ocr"]["lines"], list)  # OCR ran
    assert results["corrupt"]["error"].startswith("corrupt") or "truncated" in results["corrupt"]["error"].lower()
    assert results["missing"]["error"] == "image file not found"
    assert results["unknown-brand"]["error"] == "unknown brand 'Nobrand'"
    assert "URL" in results["url"]["error"]
    assert results[None]["error"] == "missing listing_id"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_status"] == {"scored": 3, "error": 5} and summary["errors"] == 5
    assert summary["cpu_seconds"]["ocr_photos"] == 3 and summary["cpu_seconds"]["ocr"] > 0  # every photo read
    assert summary["cpu_seconds"]["embed"] > 0 and summary["cpu_seconds"]["record"] > 0
    assert sum(summary["by_decision"].values()) == 3 and summary["photos_per_second"] > 0
    import pyarrow.parquet as pq

    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == len(rows)
    assert sorted(x for x in table.column("listing_id").to_pylist() if x) == sorted(x for x in results if x)
    catalog = _catalog(home)
    assert sorted(r[0] for r in catalog) == sorted(r["listing_id"] for r in good)
    for listing_id, sha, *_ in catalog:  # the photo is kept, as `/score` keeps it
        assert (home / "blobs" / sha[:2] / sha).is_file()
        assert results[listing_id]["sha256"] == sha


def test_scan_records_a_listing_exactly_as_the_engine_does(api_home, grocery, tmp_path):
    from markguard.serving.engine import ScoreRequest, ScoringEngine
    from markguard.serving.state.home import Home

    row = _good_rows(grocery, 1)[0]
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_without_listings(api_home.root, a)
    _copy_without_listings(api_home.root, b)
    engine = ScoringEngine(Home(a), ocr=False)
    direct = engine.score(ScoreRequest(Path(row["image"]).read_bytes(), brand=row["brand"], seller=row["seller_id"],
                                       listing=row["listing_id"], title=row["title"], label=row["image"]))
    feed = _write_jsonl(tmp_path / "feed.jsonl", [row])
    summary = run_scan(ScanSettings(home=str(b), feed=feed, ocr=False, workers=-1, runtime="torch"), tmp_path / "out",
                       progress=False)
    assert summary["by_status"] == {"scored": 1}
    scanned = _results(tmp_path / "out")[row["listing_id"]]
    assert scanned["risk"] == direct.risk and scanned["decision"] == direct.decision.value
    assert _catalog(a) == _catalog(b)  # every column but the row id and the time


def _scan_until_killed(home: Path, feed: Path, out: Path, *, chunks: int) -> None:
    """Run `markguard scan` in its own process group and SIGKILL the group after `chunks` commits."""
    env = {**os.environ, "MARKGUARD_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "markguard.serving.cli", "scan", str(feed), "--out", str(out), "--no-ocr",
         "--workers", "1", "--chunk", "2", "--quiet"], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    journal = out / "journal.jsonl"
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.read_text().count('"committed"') >= chunks:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the scan ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_sigkilled_scan_resumes_without_losing_or_duplicating(home, grocery, tmp_path):
    rows = _good_rows(grocery, 8)
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows)
    out = tmp_path / "out"
    _scan_until_killed(home, feed, out, chunks=1)
    first = _catalog(home)
    assert 2 <= len(first) < len(rows)
    summary = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1), out, progress=False)
    catalog = _catalog(home)
    assert sorted(r[0] for r in catalog) == sorted(r["listing_id"] for r in rows)  # each exactly once
    assert catalog[: len(first)] == first
    results = _results(out)
    assert sorted(results) == sorted(r["listing_id"] for r in rows)
    assert {r["status"] for r in results.values()} == {"scored"}
    assert summary["this_run"]["skipped"] >= len(first)
    # again: nothing to do; a new scan of the same feed finds every listing unchanged
    run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1), out, progress=False)
    again = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1), tmp_path / "out2", progress=False)
    assert again["by_status"] == {"unchanged": len(rows)}
    assert _catalog(home) == catalog
    by_id = {r[0]: r for r in catalog}
    for r in _results(tmp_path / "out2").values():
        assert (r["risk"], r["decision"]) == by_id[r["listing_id"]][2:4]


@pytest.mark.parametrize("crash", ["before_commit", "after_commit"])
def test_a_crash_between_journal_and_catalog_neither_loses_nor_repeats(home, grocery, tmp_path, monkeypatch, crash):
    """The two windows a kill can hit: the chunk journaled but not yet in the catalog, and the chunk
    in the catalog but its commit line not yet written."""
    import markguard.serving.scan.run as run_module

    rows = _good_rows(grocery, 4)
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows)
    settings = ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1, chunk=2)

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed

    if crash == "before_commit":
        monkeypatch.setattr(run_module, "record_chunk", die)
    else:
        monkeypatch.setattr(Journal, "committed", die)
    with pytest.raises(Killed):
        run_scan(settings, tmp_path / "out", progress=False)
    assert len(_catalog(home)) == (0 if crash == "before_commit" else 2)
    monkeypatch.undo()
    summary = run_scan(settings, tmp_path / "out", progress=False)
    assert sorted(r[0] for r in _catalog(home)) == sorted(r["listing_id"] for r in rows)
    assert summary["by_status"] == {"scored": 4}
    assert summary["this_run"].get("scored") == (4 if crash == "before_commit" else 2)


def test_rescore_records_again_once(home, grocery, tmp_path):
    rows = _good_rows(grocery, 2)
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows + rows[:1])  # the first listing twice in the feed
    s = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1), tmp_path / "a", progress=False)
    assert s["by_status"] == {"scored": 2, "duplicate": 1}
    s = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1, rescore=True), tmp_path / "b",
                 progress=False)
    assert s["by_status"] == {"scored": 2, "duplicate": 1}
    assert sorted(r[0] for r in _catalog(home)) == ["L000", "L000", "L001", "L001"]


def test_a_resumed_scan_refuses_another_feed(home, grocery, tmp_path):
    feed = _write_jsonl(tmp_path / "feed.jsonl", [])
    other = _write_jsonl(tmp_path / "other.jsonl", [])
    run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1), tmp_path / "out", progress=False)
    assert main(["scan", str(other), "--out", str(tmp_path / "out"), "--home", str(home), "--quiet"]) == 2


@pytest.mark.usefixtures("needs_ray")
def test_ray_engine_reports_bad_rows_as_the_local_engine_does(home, grocery, tmp_path):
    """Quick (no row reaches a model): Ray Data reads the feed, the actor pool checks every row."""
    (tmp_path / "folder.jpg").mkdir()
    rows = [{"listing_id": "url", "brand": "Oatly", "image": "http://127.0.0.1:9/a.jpg"},
            {"listing_id": "missing", "brand": "Oatly", "image": "missing.jpg"},
            {"listing_id": "dir", "brand": "Oatly", "image": "folder.jpg"},
            {"listing_id": "", "brand": "Oatly", "image": "missing.jpg"},
            {"listing_id": "long", "brand": "Oatly", "title": "x" * 600, "image": "missing.jpg"}]
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows)
    runs = {}
    for engine in ("local", "ray"):
        runs[engine] = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=1),
                                tmp_path / engine, engine=engine, progress=False)
        assert runs[engine]["by_status"] == {"error": len(rows)}
    assert _results(tmp_path / "local") == _results(tmp_path / "ray")
    assert runs["local"]["errors_by_message"] == runs["ray"]["errors_by_message"]
    assert _catalog(home) == []


@pytest.mark.slow
@pytest.mark.usefixtures("needs_ray")
def test_local_and_ray_engines_give_identical_results(home, grocery, tmp_path):
    import csv

    rows = _good_rows(grocery, 6)
    feed = tmp_path / "feed.csv"  # CSV: Ray Data and the local reader must read the same text
    with open(feed, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    local = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=1), tmp_path / "local",
                     progress=False)
    ray_run = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=1, rescore=True),
                       tmp_path / "ray", engine="ray", progress=False)
    assert local["by_status"] == ray_run["by_status"] == {"scored": len(rows)}
    a, b = _results(tmp_path / "local"), _results(tmp_path / "ray")
    for listing_id in a:
        keep = ("risk", "decision", "brand", "product", "signals", "matches", "claimed")
        assert {k: a[listing_id][k] for k in keep} == {k: b[listing_id][k] for k in keep}, listing_id


@pytest.mark.slow
@pytest.mark.usefixtures("needs_ray")
def test_the_ray_engine_scans_on_a_cluster_started_with_ray_start_head(home, grocery, tmp_path):
    """`markguard scan --engine ray --ray-address` against `ray start --head` on this machine (its own
    port and session folder): the same results as the local engine, a bad row reported, not fatal."""
    from markguard.serving.scan.engines import ray_head

    rows = _good_rows(grocery, 4) + [{"listing_id": "missing", "brand": "Oatly", "image": "missing.jpg"}]
    feed = _write_jsonl(tmp_path / "feed.jsonl", rows)
    assert main(["scan", str(feed), "--out", str(tmp_path / "local"), "--home", str(home), "--no-ocr",
                 "--workers", "1", "--quiet"]) == 0
    with ray_head(2) as address:
        assert main(["scan", str(feed), "--out", str(tmp_path / "ray"), "--home", str(home), "--no-ocr",
                     "--workers", "1", "--rescore", "--engine", "ray", "--ray-address", address, "--quiet"]) == 0
    a, b = _results(tmp_path / "local"), _results(tmp_path / "ray")
    assert a["missing"]["error"] and a["missing"]["error"] == b["missing"]["error"]
    keep = ("risk", "decision", "brand", "product", "signals", "matches", "claimed")
    for row in rows[:4]:
        i = row["listing_id"]
        assert {k: a[i][k] for k in keep} == {k: b[i][k] for k in keep}, i


@pytest.mark.usefixtures("needs_ray")
def test_ray_head_refuses_a_process_that_imported_ray_without_its_settings(tmp_path):
    """Ray reads its settings at import: a client imported without them looked for the cluster at the
    host's address and hung, then failed with "Failed to connect to GCS". Now a clear error, at once."""
    script = ("import ray\nfrom markguard.serving.scan.engines import ray_head\n"
              "with ray_head(1):\n    print('started')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "started" not in done.stdout
    assert "Ray was imported before ray_head without RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in done.stderr


def test_local_scorers_get_their_share_of_the_threads_and_the_caller_keeps_its_own(monkeypatch):
    """The native pools (OpenMP, OpenBLAS, MKL) size themselves at import from the environment, before a
    scorer could set them: a spawned scorer inherits its share, a variable the caller set is kept, and
    the driver's environment is as it was once the pool is gone."""
    from markguard.serving.scan.engines import _share_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    child = [sys.executable, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS'), "
             "os.environ.get('OPENBLAS_NUM_THREADS'), os.environ.get('MKL_NUM_THREADS'))"]
    with _share_threads(1):
        assert subprocess.run(child, capture_output=True, text=True, check=True).stdout.split() == ["1", "1", "3"]
    assert "OMP_NUM_THREADS" not in os.environ and "OPENBLAS_NUM_THREADS" not in os.environ
    assert os.environ["MKL_NUM_THREADS"] == "3"


def test_a_scorer_caps_the_native_pools_its_libraries_started(tmp_path):
    """A Ray actor's libraries start their pools (one thread per core) before it runs: the scorer caps
    every OpenBLAS and OpenMP pool loaded, whatever the environment said (`vision.runtime.limit_threads`,
    which the server's workers call too)."""
    script = ("import sys, cv2, threadpoolctl, torch\nfrom markguard.serving.scan.worker import ScanWorker\n"
              "ScanWorker(sys.argv[1], ocr=False, feed_dir='.', threads=1)\n"
              "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info()}"
              " | {torch.get_num_threads(), cv2.getNumThreads()}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "home")], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert done.stdout.strip().splitlines()[-1] == "[1]"


def test_a_ray_actor_scores_a_long_block_a_chunk_at_a_time(tmp_path):
    """Ray Data hands an actor one read block (a long feed's hold hundreds of rows): the actor scores it
    in chunks, as a local scorer would, and returns every row's outcome in order."""
    import pyarrow as pa

    from markguard.serving.scan.engines import RayScorer

    rows = [{"listing_id": f"{i:05d}", "seller_id": "s", "brand": "B", "product": None, "title": "t",
             "image": f"missing-{i}.jpg"} for i in range(5)]
    scorer = RayScorer(str(tmp_path / "home"), {"ocr": False, "feed_dir": str(tmp_path)}, 2)
    outcomes = [json.loads(o) for o in scorer(pa.Table.from_pylist(rows))["outcome"]]
    assert [o["listing_id"] for o in outcomes] == [r["listing_id"] for r in rows]
    assert all(o["status"] == "error" for o in outcomes)
    assert [i for i, o in enumerate(outcomes) if "cpu" in o] == [0, 2, 4]  # one per chunk: 2 + 2 + 1


def test_feed_formats_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"listing_id": f"{i:05d}", "seller_id": "s", "brand": "B", "product": None, "title": "t", "image": "a.jpg"}
            for i in range(5)]
    _write_jsonl(tmp_path / "f.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "f.parquet")
    (tmp_path / "f.csv").write_text("listing_id,seller_id,brand,product,title,image\n"
                                    + "".join(f"{r['listing_id']},s,B,,t,a.jpg\n" for r in rows))
    for name in ("f.jsonl", "f.parquet", "f.csv"):
        assert count_rows(tmp_path / name) == 5
        got = [r for c in read_chunks(tmp_path / name, size=2) for r in c]
        assert [{k: r[k] for k in rows[0]} for r in got] == rows, name


_MEASURE = """
import json, resource, sys
from pathlib import Path
from markguard.serving.scan.feed import read_chunks
from markguard.serving.scan.journal import Journal
feed, out = Path(sys.argv[1]), Path(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rows = sum(len(chunk) for chunk in read_chunks(feed, size=256))
done = Journal(out, feed=feed).open(None)  # nothing pending: the catalog is never asked
print(json.dumps({"rows": rows, "done": len(done), "kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}))
"""


def _feed_and_journal(folder: Path, n: int) -> tuple[Path, Path]:
    folder.mkdir()
    feed = folder / "feed.jsonl"
    with open(feed, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"listing_id": f"listing-{i:06d}", "seller_id": f"s{i % 97}", "brand": "Oatly",
                                 "title": "Oat drink 1 l " * 4, "image": f"photos/{i % 5}.jpg"}) + "\n")
    out = folder / "out"
    out.mkdir()
    journal = Journal(out, feed=feed)
    journal._fh = open(journal.path, "a")  # noqa: SIM115
    journal._append({"scan": 2, "feed": journal.feed, "feed_stat": journal._feed_stat(), "start": 0})
    for chunk in read_chunks(feed, size=1024):
        outs = [{"row": r["row"], "listing_id": r["listing_id"], "seller_id": r["seller_id"], "image": r["image"], "sha256": "ab" * 32,
                 "status": "scored", "error": None, "score": {"risk": 0.1, "decision": "pass"}, "phash": 0}
                for r in chunk]
        journal.committed(journal.pending(outs, before=0))
    journal.close()
    return feed, out


def test_a_100k_row_feed_streams_in_bounded_memory(tmp_path):
    """Reading a feed and resuming from its journal hold a chunk and 16 bytes a finished row, never the
    feed: the peak memory of 100,000 rows is within a few MB of 2,000 rows'."""
    peaks = {}
    for n in (2_000, 100_000):
        feed, out = _feed_and_journal(tmp_path / str(n), n)
        proc = subprocess.run([sys.executable, "-c", _MEASURE, str(feed), str(out)], capture_output=True, text=True,
                              check=True, cwd=REPO, timeout=120)
        got = json.loads(proc.stdout)
        assert got["rows"] == got["done"] == n
        peaks[n] = got["kib"]
    assert (tmp_path / "100000" / "feed.jsonl").stat().st_size > 15_000_000
    assert peaks[100_000] - peaks[2_000] < 12 * 1024, peaks  # the feed alone is 17 MB; its journal 30 MB


def test_done_map_knows_rows_by_feed_position():
    import numpy as np

    rows = np.random.default_rng(0).choice(10_000, 3_000, replace=False)
    done, truth = DoneMap(rows), set(rows.tolist())
    assert len(done) == len(truth)
    assert all((row in done) == (row in truth) for row in range(-1, 10_002))
    assert 5 not in DoneMap()


def test_scans_api_runs_a_feed_from_the_feeds_folder_only(api_home, home, grocery, tmp_path):
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    from markguard.serving.api import Backend, build_app
    from markguard.serving.limits import RateLimiter
    from markguard.serving.state.home import Home

    feeds = home / "feeds"
    (feeds / "photos").mkdir(parents=True)
    rows = _good_rows(grocery, 2)
    for i, row in enumerate(rows):
        shutil.copy(row["image"], feeds / "photos" / f"{i}.jpg")
        row["image"] = f"photos/{i}.jpg"
    rows += [{"listing_id": "outside", "image": rows[0]["image"].replace("photos/0.jpg", "../catalog.sqlite")},
             {"listing_id": "absolute", "image": str(grocery / "LICENSE")}]
    _write_jsonl(feeds / "today.jsonl", rows)
    (tmp_path / "elsewhere.jsonl").write_text("")
    # the routes use only the backend's home and limiter; the scan itself runs in a real `markguard scan`
    backend = Backend(engine=SimpleNamespace(home=Home(home)), embed=None, limiter=RateLimiter(rate=100, burst=100))
    client = TestClient(build_app(backend), raise_server_exceptions=False)
    platform = {"Authorization": f"Bearer {api_home.keys['platform']}"}

    assert client.post("/v1/scans", json={"feed": "today.jsonl"}).status_code == 401
    brand = {"Authorization": f"Bearer {api_home.keys['oatly']}"}
    assert client.post("/v1/scans", json={"feed": "today.jsonl"}, headers=brand).status_code == 403
    for feed, status in (("../catalog.sqlite", 400), (str(tmp_path / "elsewhere.jsonl"), 400),
                         ("../../elsewhere.jsonl", 400), ("nope.jsonl", 404), ("photos/0.jpg", 422)):
        assert client.post("/v1/scans", json={"feed": feed}, headers=platform).status_code == status, feed
    r = client.post("/v1/scans", json={"feed": "today.jsonl", "ocr": False}, headers=platform)
    assert r.status_code == 202, r.text
    scan_id = r.json()["id"]
    assert client.get(f"/v1/scans/{scan_id}", headers=brand).status_code == 403
    assert client.get("/v1/scans/0123456789abcdef", headers=platform).status_code == 404
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = client.get(f"/v1/scans/{scan_id}", headers=platform).json()
        if state["state"] not in ("starting", "running"):
            break
        time.sleep(0.5)
    assert state["state"] == "finished", state
    assert state["summary"]["by_status"] == {"scored": 2, "error": 2}
    assert state["summary"]["errors_by_message"] == {"image lies outside the feed's folder": 2}
    assert state["rows_done"] == state["rows_total"] == 4
    assert sorted(r[0] for r in _catalog(home)) == ["L000", "L001"]
