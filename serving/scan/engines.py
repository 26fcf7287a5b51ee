"""Where a scan's scorers run: worker processes on this machine (`local`) or a Ray Data actor pool
(`ray`). Both turn the feed into lists of outcome dicts (`ScanWorker.process`) and hand them to the
driver, which alone writes the catalog and the journal."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from markguard.serving.scan.feed import FIELDS, clean_row, count_rows, feed_format, read_chunks
from markguard.serving.scan.worker import DoneMap, ScanWorker
from markguard.vision.errors import MarkguardError

__all__ = ["ENGINES", "ScanSettings", "local_outcomes", "ray_head", "ray_outcomes"]

# A Ray instance markguard starts talks to 127.0.0.1 only, and never phones home (COMPONENTS.md). Its
# workers (the scorers) run at the driver's priority: Ray's default niceness 15 put them behind Ray's own
# helpers and the driver's executor on a machine with a core per scorer.
_RAY_LOCAL_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
    "RAY_worker_niceness": "0",
}
_SINGLE_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's client and nodes use 127.0.0.1


@dataclasses.dataclass(frozen=True)
class ScanSettings:
    home: str
    feed: Path
    ocr: bool = True
    rescore: bool = False
    chunk: int = 16  # rows a scorer takes at a time (one batched forward pass)
    workers: int = 0  # scorers (0: one per core; -1: the local engine scores in this process)
    image_root: str | None = None  # images must lie under this folder (None: anywhere readable)
    ray_address: str | None = None
    ocr_gate: bool = True  # read text only where it can matter (`vision.pipeline.OcrGate`); False: every photo
    runtime: str = "onnx"  # the networks' runtime (`vision.runtime`: ONNX Runtime where installed and equal)
    gate_outcomes: str = "own"  # the wordmark readings the gate weighs (`vision.pipeline.WORDMARK_OUTCOMES`)

    @property
    def scorers(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    @property
    def threads(self) -> int:
        """Torch threads per scorer: the cores shared out."""
        cores = max(1, os.cpu_count() or 1)
        return cores if self.workers < 0 else max(1, cores // self.scorers)

    def worker_kwargs(self, done: DoneMap) -> dict[str, Any]:
        return {"ocr": self.ocr, "feed_dir": str(self.feed.resolve().parent), "image_root": self.image_root,
                "done": done, "rescore": self.rescore, "threads": self.threads, "ocr_gate": self.ocr_gate,
                "runtime": self.runtime, "gate_outcomes": self.gate_outcomes}


# -- local: a process pool, one engine per process -----------------------------------------------------
_AHEAD = 4  # chunks per scorer out at once (in flight, or back and waiting for an earlier chunk)
_WORKER: ScanWorker | None = None


def _init_local(home: str, kwargs: dict[str, Any]) -> None:
    global _WORKER
    try:  # die with the scan: a SIGKILLed parent leaves no orphan scorers
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _WORKER = ScanWorker(home, **kwargs)


# The native thread pools a scorer's libraries size at import (OpenMP, OpenBLAS under numpy and FAISS,
# MKL): read from the environment before `ScanWorker` can set them, so a spawned scorer inherits them. Ray
# sets OMP_NUM_THREADS for its workers itself.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def _share_threads(threads: int) -> Iterator[None]:
    """The scorers' share of the cores for the pools above, where the caller set none, while the pool
    lives (spawned scorers inherit this process's environment): each pool otherwise starts a thread per
    core in every scorer, and they spin against each other. Restored after."""
    unset = [name for name in _THREAD_VARIABLES if name not in os.environ]
    os.environ.update(dict.fromkeys(unset, str(threads)))
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)


def _process_local(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert _WORKER is not None
    return _WORKER.process(rows)


def local_outcomes(settings: ScanSettings, done: DoneMap) -> Iterator[list[dict[str, Any]]]:
    """Chunks of the feed through `settings.scorers` worker processes, yielded in feed order. A scorer
    that finishes takes the next chunk at once, whether or not the chunks before it are back: a slow
    chunk (photos that need their text read) holds up the writer, never the other scorers. At most
    `_AHEAD` chunks per scorer are out (in flight or waiting for their turn), so the feed is never held
    whole."""
    kwargs = settings.worker_kwargs(done)
    chunks = read_chunks(settings.feed, size=settings.chunk)
    if settings.workers < 0:  # in this process (debugging, and small benches)
        worker = ScanWorker(settings.home, **kwargs)
        for rows in chunks:
            yield worker.process(rows)
        return
    with _share_threads(settings.threads):
        pool = ProcessPoolExecutor(settings.scorers, mp_context=get_context("spawn"), initializer=_init_local,
                                   initargs=(settings.home, kwargs))
        try:
            yield from _pool_outcomes(pool, iter(chunks), settings)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _pool_outcomes(pool: ProcessPoolExecutor, feed: Iterator[list[dict[str, Any]]], settings: ScanSettings
                   ) -> Iterator[list[dict[str, Any]]]:
    """The pool's outcomes in feed order, at most `_AHEAD` chunks a scorer out at once."""
    out: collections.deque[Future] = collections.deque()  # in feed order, done or not
    limit = _AHEAD * settings.scorers
    exhausted = False
    while True:
        running = sum(not f.done() for f in out)
        while not exhausted and running < settings.scorers + 1 and len(out) < limit:
            rows = next(feed, None)
            if rows is None:
                exhausted = True
                break
            out.append(pool.submit(_process_local, rows))
            running += 1
        if not out:
            break
        if out[0].done():
            yield out.popleft().result()
            continue
        wait([f for f in out if not f.done()], return_when=FIRST_COMPLETED)


# -- ray: Ray Data reads the feed, an actor pool scores it -------------------------------------------
_RAY_BLOCKS = 64  # read blocks per actor at most (a long feed's blocks hold more than one chunk)


class RayScorer:
    """A Ray actor: loads the model and index once, then scores the feed's read blocks."""

    def __init__(self, home: str, kwargs: dict[str, Any], chunk: int) -> None:
        self.worker = ScanWorker(home, **kwargs)
        self.chunk = chunk

    def __call__(self, block: Any) -> dict[str, Any]:
        """One read block, scored a chunk at a time (a long feed's blocks hold many chunks)."""
        rows = [clean_row(r, row=-1) for r in block.to_pylist()]
        outcomes = [o for i in range(0, len(rows), self.chunk) for o in self.worker.process(rows[i:i + self.chunk])]
        return {"outcome": [json.dumps(o) for o in outcomes]}


def ray_outcomes(settings: ScanSettings, done: DoneMap) -> Iterator[list[dict[str, Any]]]:
    try:
        if settings.ray_address is None:
            for name, value in _RAY_LOCAL_ENV.items():
                os.environ.setdefault(name, value)
        import ray
        import ray.data
    except ModuleNotFoundError:
        raise MarkguardError("the ray engine needs Ray: pip install 'markguard[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if settings.ray_address is not None:
            ray.init(address=settings.ray_address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=256 * 1024**2, log_to_driver=False, logging_level=logging.WARNING)
    try:
        fmt = feed_format(settings.feed)
        path = str(settings.feed.resolve())
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.execution_options.preserve_order = True
        # Blocks of about one chunk each (at most _RAY_BLOCKS per scorer), two at a time an actor: by
        # default a 300-row feed was 4 blocks of 75, all dispatched at once, and nothing came back (no
        # progress, nothing journaled) until the end; now chunks come back as they finish (same photos/s).
        # A task is one block as read (`batch_size=None`): with `batch_size=chunk` Ray Data bundled blocks
        # until a batch was full, so 150 rows in 10 blocks of 15 went out as 5 tasks of 30, split 3 to 2
        # between two actors (one idle 5 s at the end).
        blocks = max(1, min(-(-count_rows(settings.feed) // settings.chunk), _RAY_BLOCKS * settings.scorers))
        if fmt == "jsonl":
            ds = ray.data.read_json(path, lines=True, override_num_blocks=blocks)
        elif fmt == "csv":
            import pyarrow as pa
            import pyarrow.csv

            ds = ray.data.read_csv(path, override_num_blocks=blocks, convert_options=pyarrow.csv.ConvertOptions(  # text, as read locally
                column_types=dict.fromkeys(FIELDS, pa.string())))
        else:
            ds = ray.data.read_parquet(path, override_num_blocks=blocks)
        ds = ds.map_batches(
            RayScorer, fn_constructor_args=(settings.home, settings.worker_kwargs(done), settings.chunk),
            compute=ray.data.ActorPoolStrategy(size=settings.scorers, max_tasks_in_flight_per_actor=2),
            num_cpus=0.5,  # fractional: whole CPUs for every actor would starve the read tasks (a silent hang)
            batch_size=None, batch_format="pyarrow",
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [json.loads(s) for s in batch.column("outcome").to_pylist()]
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def ray_head(cpus: int | None = None, *, timeout: float = 60.0) -> Iterator[str]:
    """A Ray cluster as `ray start --head` makes one, on 127.0.0.1 with its own port and session folder,
    stopped on exit (SIGTERM to `ray start --block`, which stops what it started in about 2 s; its process
    group is killed if it lingers); yields its address for `--ray-address`. For tests and
    `bench scan`: `ray stop` would stop every Ray process on the machine. This process's Ray clients get
    the cluster's settings (`_RAY_LOCAL_ENV`) where they have none, or they would look for it elsewhere;
    Ray reads them at import, so a process that imported Ray without them is refused."""
    if "ray" in sys.modules and os.environ.get(_SINGLE_NODE) != "0":
        raise MarkguardError(f"Ray was imported before ray_head without {_SINGLE_NODE}=0: its client would look "
                             f"for the cluster at this host's network address, not 127.0.0.1; set it before "
                             f"importing Ray, or import Ray after ray_head")
    for name, value in _RAY_LOCAL_ENV.items():
        os.environ.setdefault(name, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="mgray-", dir="/tmp")  # short: Ray's socket paths live under it
    ray_cli = Path(sys.executable).with_name("ray")
    command = [str(ray_cli) if ray_cli.exists() else "ray", "start", "--head", "--block", f"--port={port}",
               "--node-ip-address=127.0.0.1", f"--num-cpus={cpus or os.cpu_count() or 1}",
               "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
               f"--object-store-memory={256 * 1024**2}"]
    log = Path(temp) / "head.log"
    with log.open("wb") as out:
        head = subprocess.Popen(command, env=os.environ | _RAY_LOCAL_ENV, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while b"Ray runtime started" not in log.read_bytes():  # up: what `ray start` prints once it is
            if head.poll() is not None:
                raise MarkguardError(f"ray start --head exited {head.returncode}: "
                                     f"{log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise MarkguardError(f"ray start --head did not come up in {timeout:.0f} s")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            head.terminate()  # `ray start --block` stops what it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


ENGINES = {"local": local_outcomes, "ray": ray_outcomes}
