"""`run_scan`: a feed through the chosen engine's scorers, recorded by one writer, journaled per chunk,
then written out as results.jsonl, results.parquet and summary.json. One scan at a time writes an out
folder: it holds `DIR/scan.lock` (an flock, released however the scan ends) while it runs."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tqdm import tqdm

from markguard.serving.scan.engines import ENGINES, ScanSettings
from markguard.serving.scan.feed import count_rows, feed_format
from markguard.serving.scan.journal import Journal
from markguard.serving.scan.record import last_listing_row, record_chunk
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing
from markguard.vision.atomic import atomic_write_bytes
from markguard.vision.errors import MarkguardError

__all__ = ["run_scan", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("row", "listing_id", "seller_id", "image", "sha256", "status", "error", "risk", "decision",
                  "brand", "product", "model")
_PARQUET_BATCH = 2048


def run_scan(settings: ScanSettings, out_dir: Path, *, engine: str = "local", progress: bool = True,
             on_chunk: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Scan (or resume scanning) `settings.feed` into `out_dir`; returns the summary."""
    if engine not in ENGINES:
        raise MarkguardError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    feed_format(settings.feed)
    if not settings.feed.is_file():
        raise MarkguardError(f"{settings.feed}: no such feed file")
    total = count_rows(settings.feed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _only_writer(out_dir):
        return _scan(settings, out_dir, total=total, engine=engine, progress=progress, on_chunk=on_chunk)


@contextlib.contextmanager
def _only_writer(out_dir: Path) -> Iterator[None]:
    """`DIR/scan.lock`, held for the scan: two scans into one folder would both append to its journal
    and record its rows twice. The kernel drops the lock when the scan ends, SIGKILL included."""
    with open(out_dir / "scan.lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MarkguardError(f"another scan is writing {out_dir}") from None
        yield


def _scan(settings: ScanSettings, out_dir: Path, *, total: int, engine: str, progress: bool,
          on_chunk: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    home = Home(settings.home)
    journal = Journal(out_dir, feed=settings.feed)
    done = journal.open(home)
    run: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    state = {"state": "running", "rows_total": total, "rows_finished_before": len(done), "engine": engine}
    _write_json(out_dir / "progress.json", state)
    rows_done = 0
    cpu: collections.Counter[str] = collections.Counter()  # process CPU seconds: scorers' stages, and this writer's
    driver_started = time.process_time()
    bar = tqdm(total=total, unit="row", desc="scan", disable=not progress, dynamic_ncols=True)
    try:
        for outcomes in ENGINES[engine](settings, done):
            for row, o in enumerate(outcomes, rows_done):  # both engines yield the feed in order
                o["row"] = row  # a Ray block's rows do not know their position: the driver numbers them all
                cpu.update(o.pop("cpu", None) or {})
            fresh = [o for o in outcomes if o["row"] not in done]  # Ray's scorers cannot skip them
            run["skipped"] += len(outcomes) - len(fresh)
            if fresh:
                _mark_repeats(home, fresh, since=journal.start if settings.rescore else 0)
                chunk = journal.pending(fresh, before=last_listing_row(home))
                recording = time.process_time()
                record_chunk(home, fresh)
                cpu["record"] += time.process_time() - recording
                journal.committed(chunk)
                run.update(o["status"] for o in fresh)
            bar.update(len(outcomes))
            rows_done += len(outcomes)
            seconds = time.perf_counter() - started
            state.update(rows_done=rows_done, seconds=round(seconds, 1), **{k: run[k] for k in sorted(run)},
                         photos_per_second=round(run["scored"] / seconds, 3) if seconds else 0.0)
            _write_json(out_dir / "progress.json", state)
            if on_chunk is not None:
                on_chunk(state)
    except BaseException:
        state["state"] = "failed"
        _write_json(out_dir / "progress.json", state)
        raise
    finally:
        bar.close()
        journal.close()
    seconds = time.perf_counter() - started
    cpu["driver"] = time.process_time() - driver_started  # reading, recording, journaling (Ray's own not counted)
    summary = _write_results(journal, out_dir)
    summary.update(engine=engine, feed=str(settings.feed), seconds=round(seconds, 2),
                   this_run={k: run[k] for k in sorted(run)},
                   cpu_seconds={k: round(v, 3) for k, v in sorted(cpu.items())},
                   photos_per_second=round(run["scored"] / seconds, 3) if seconds else 0.0)
    _write_json(out_dir / "summary.json", summary)
    state.update(state="finished", summary="summary.json")
    _write_json(out_dir / "progress.json", state)
    home.close()
    return summary


def _mark_repeats(home: Home, outcomes: list[dict[str, Any]], *, since: int) -> None:
    """A listing the catalog already holds with this photo and model (recorded after row `since`), or an
    earlier row of this chunk shows, is not recorded again: an earlier row of the feed got there first."""
    scored = [o for o in outcomes if o["status"] == "scored"]
    if not scored:
        return
    with home.sessions() as session:
        held = set(session.execute(
            select(Listing.listing_id, Listing.image_sha256, Listing.model_tag)
            .where(Listing.id > since, Listing.listing_id.in_(sorted({o["listing_id"] for o in scored})))
        ).all())
    for out in scored:
        key = (out["listing_id"], out["sha256"], out["score"]["model"])
        if key in held:
            out["status"] = "duplicate"
        held.add(key)


def result_row(out: dict[str, Any]) -> dict[str, Any]:
    """An outcome as a line of results.jsonl: the score JSON with the listing id, status and error."""
    return {"row": out["row"], "listing_id": out["listing_id"], "seller_id": out["seller_id"], "image": out["image"],
            "sha256": out["sha256"], "status": out["status"], "error": out["error"], **(out["score"] or {})}


def _write_results(journal: Journal, out_dir: Path) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"row": pa.int64(), "risk": pa.float64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in RESULT_COLUMNS] + [("score_json", pa.string())])
    by_status: collections.Counter[str] = collections.Counter()
    by_decision: collections.Counter[str] = collections.Counter()
    by_brand: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    errors: collections.Counter[str] = collections.Counter()
    batch: list[dict[str, Any]] = []
    tmp_jsonl, tmp_parquet = out_dir / ".results.jsonl.tmp", out_dir / ".results.parquet.tmp"
    with open(tmp_jsonl, "w", encoding="utf-8") as fh, pq.ParquetWriter(tmp_parquet, schema) as writer:
        for out in journal.committed_rows():
            row = result_row(out)
            fh.write(json.dumps(row) + "\n")
            score = out["score"] or {}
            brand = (score.get("brand") or {}).get("name")
            batch.append({**{c: row.get(c) for c in RESULT_COLUMNS}, "brand": brand,
                          "product": (score.get("product") or {}).get("name"),
                          "score_json": json.dumps(score) if out["status"] == "scored" else None})
            by_status[out["status"]] += 1
            if out["status"] == "error":
                errors[out["error"]] += 1
            elif "decision" in score:
                by_decision[score["decision"]] += 1
                by_brand[brand or "-"][score["decision"]] += 1
            if len(batch) == _PARQUET_BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    tmp_jsonl.replace(out_dir / "results.jsonl")
    tmp_parquet.replace(out_dir / "results.parquet")
    return {"rows": sum(by_status.values()), "by_status": dict(by_status), "by_decision": dict(by_decision),
            "by_brand": {b: dict(c) for b, c in sorted(by_brand.items())}, "errors": sum(errors.values()),
            "errors_by_message": dict(errors.most_common(20))}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
