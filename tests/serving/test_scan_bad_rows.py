"""`markguard scan` on hostile feeds: a bad row fails alone, every feed row gets exactly one result however
often the scan is interrupted, and one scan at a time writes an out folder. Real model, real catalog."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from markguard.serving.cli import main
from markguard.serving.scan import ScanSettings, run_scan

from .test_scan import _catalog, _copy_without_listings, _good_rows

BOM = b"\xef\xbb\xbf"  # what Excel writes first


@pytest.fixture()
def home(api_home, tmp_path: Path) -> Path:
    """A private copy of the API tests' home (Oatly and Arla enrolled, no listings)."""
    return _copy_without_listings(api_home.root, tmp_path / "home")


def _lines(out: Path) -> list[dict]:
    """results.jsonl in feed order, checked to hold each feed row exactly once."""
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["row"] for r in lines) == list(range(len(lines))), "a feed row is missing or repeated"
    return sorted(lines, key=lambda r: r["row"])


def _scan(home: Path, feed: Path, out: Path, *extra: str) -> int:
    return main(["scan", str(feed), "--out", str(out), "--home", str(home), "--workers", "-1", "--no-ocr",
                 "--quiet", *extra])


def test_unreadable_jsonl_rows_fail_alone_and_their_neighbours_are_scored(home, grocery, tmp_path):
    good = _good_rows(grocery, 3)
    lines = [
        json.dumps(good[0]),
        '{"listing_id": ' + "9" * 5000 + ', "brand": "Oatly", "image": "a.jpg"}',  # past int's digit limit
        "[" * 100_000 + "]" * 100_000,  # past the parser's recursion limit
        json.dumps({**good[1], "listing_id": "nul", "image": good[1]["image"] + "\0"}),
        json.dumps({**good[1], "listing_id": "surrogate", "seller_id": "\ud800"}),  # cannot be stored as UTF-8
        json.dumps(good[1]),
        json.dumps({**good[2], "title": "bad \udc00 title"}),
        json.dumps(good[2]),
    ]
    feed = tmp_path / "feed.jsonl"
    feed.write_bytes(BOM + "".join(line + "\n" for line in lines).encode())  # one chunk: the rows share a commit
    out = tmp_path / "out"
    assert _scan(home, feed, out) == 0
    results = _lines(out)
    assert [(r["listing_id"], r["status"]) for r in results] == [
        ("L000", "scored"), (None, "error"), (None, "error"), ("nul", "error"), ("surrogate", "error"),
        ("L001", "scored"), ("L002", "error"), ("L002", "scored")]
    assert [r["error"] for r in results if r["status"] == "error"] == [
        "line 2: not JSON (a number too long)", "line 3: not JSON (nested too deep)", "image holds a NUL character",
        "seller_id is not UTF-8 text (an unpaired surrogate)", "title is not UTF-8 text (an unpaired surrogate)"]
    assert [r[0] for r in _catalog(home)] == ["L000", "L001", "L002"]
    assert json.loads((out / "progress.json").read_text())["state"] == "finished"


def test_a_csv_feed_with_a_bom_and_oversized_fields_scores_its_other_rows(home, grocery, tmp_path):
    good = _good_rows(grocery, 3)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(good[0]))
    writer.writeheader()
    writer.writerows([good[0], {**good[1], "listing_id": "long-title", "title": "x" * 200_000},
                      {**good[1], "listing_id": "past-limit", "title": "x" * ((1 << 24) + 1)},  # 16 Mi: the limit
                      good[1], {**good[2], "listing_id": "nul", "image": "a\0.jpg"}, good[2]])
    feed = tmp_path / "feed.csv"
    feed.write_bytes(BOM + text.getvalue().encode())
    out = tmp_path / "out"
    assert _scan(home, feed, out) == 0
    results = _lines(out)
    assert [(r["listing_id"], r["status"], r["error"]) for r in results] == [
        ("L000", "scored", None),  # the BOM is not part of the first column's name
        ("long-title", "error", "title longer than 2000 characters"),
        (None, "error", "line 4: not CSV (field larger than field limit (16777216))"),
        ("L001", "scored", None),
        ("nul", "error", "image holds a NUL character"),
        ("L002", "scored", None)]
    assert [r[0] for r in _catalog(home)] == ["L000", "L001", "L002"]


def test_a_corrupt_parquet_feed_is_one_clear_error(home, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    feed = tmp_path / "feed.parquet"
    pq.write_table(pa.Table.from_pylist([{"listing_id": f"L{i}", "image": "a.jpg"} for i in range(100)]), feed)
    feed.write_bytes(feed.read_bytes()[:-40])  # cut short: its footer is gone
    capsys.readouterr()
    assert _scan(home, feed, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"markguard: error: {feed}: unreadable Parquet file (") and err.count("\n") == 1, err


def test_an_interrupted_scan_gives_every_feed_row_exactly_one_result(home, grocery, tmp_path):
    """Rows that share a listing id and photo (or have neither): each is its own row, finished or not."""
    good = _good_rows(grocery, 1)[0]
    missing = {"listing_id": "E1", "seller_id": "s1", "brand": "Oatly", "image": "missing.jpg"}
    lines = ["not json A", json.dumps(missing), json.dumps(good), "not json B",
             json.dumps({**missing, "title": "another row"}), json.dumps(good)]
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(line + "\n" for line in lines))
    settings = ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1, chunk=1)
    out = tmp_path / "out"

    class Killed(BaseException):
        pass

    def stop_after_two(state: dict) -> None:
        if state["rows_done"] - state.get("skipped", 0) == 2:  # two rows finished in this run
            raise Killed

    runs = 0
    while True:
        runs += 1
        try:
            summary = run_scan(settings, out, progress=False, on_chunk=stop_after_two)
            break
        except Killed:
            assert runs < 10
    assert len((out / "results.jsonl").read_text().splitlines()) == len(lines)
    assert runs == 4  # three runs of two new rows each, then one with nothing left
    results = _lines(out)
    assert [(r["listing_id"], r["status"], r["error"]) for r in results] == [
        (None, "error", "line 1: not JSON (Expecting value)"), ("E1", "error", "image file not found"),
        ("L000", "scored", None), (None, "error", "line 4: not JSON (Expecting value)"),
        ("E1", "error", "image file not found"), ("L000", "unchanged", None)]
    assert summary["rows"] == 6 and summary["this_run"] == {"skipped": 6}
    assert [r[0] for r in _catalog(home)] == ["L000"]


def test_a_feed_edited_since_its_scan_began_is_not_resumed(home, grocery, tmp_path, capsys):
    """Rows are resumed by position: a feed edited in place would skip rows it never scanned."""
    good = _good_rows(grocery, 2)
    feed = tmp_path / "feed.jsonl"
    feed.write_text(json.dumps(good[0]) + "\n")
    out = tmp_path / "out"
    assert _scan(home, feed, out) == 0
    feed.write_text(json.dumps(good[1]) + "\n" + json.dumps(good[0]) + "\n")  # a row put in front
    capsys.readouterr()
    assert _scan(home, feed, out) == 2
    assert "changed since the scan" in capsys.readouterr().err
    assert [r["listing_id"] for r in _lines(out)] == [good[0]["listing_id"]]


def test_a_second_scan_into_the_same_folder_is_refused_while_the_first_runs(home, grocery, tmp_path, capsys):
    rows = _good_rows(grocery, 3)
    feed = tmp_path / "feed.jsonl"
    feed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    refused = []

    def second_scan(state: dict) -> None:
        if not refused:
            capsys.readouterr()
            refused.append((_scan(home, feed, out), capsys.readouterr().err))

    summary = run_scan(ScanSettings(home=str(home), feed=feed, ocr=False, workers=-1, chunk=1), out,
                       progress=False, on_chunk=second_scan)
    assert refused == [(2, f"markguard: error: another scan is writing {out}\n")]
    assert summary["by_status"] == {"scored": 3}
    assert [r["listing_id"] for r in _lines(out)] == ["L000", "L001", "L002"]
    assert json.loads((out / "progress.json").read_text())["state"] == "finished"
    assert _scan(home, feed, out) == 0  # the lock goes with the scan that held it
    assert sorted(r[0] for r in _catalog(home)) == ["L000", "L001", "L002"]
