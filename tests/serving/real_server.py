"""A real `markguard serve` on a free loopback port, for tests that need the real server (BentoML, its
worker processes, multipart parsing in uvicorn): started in its own session, stopped with its group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def real_server(home: Path, log: Path, *, env: dict[str, str] | None = None,
                extra: tuple[str, ...] = ()) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield (base URL, the `markguard serve` process) once `/readyz` answers 200."""
    port = free_port()
    environ = {**os.environ, "MARKGUARD_THREADS": "1", "MARKGUARD_EMBED_WORKERS": "1", **(env or {})}
    command = [sys.executable, "-m", "markguard.serving.cli", "serve", "--home", str(home), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1", *extra]
    with serving_process(command, port, log, env=environ) as served:
        yield served


@contextlib.contextmanager
def serving_process(command: list[str], port: int, log: Path, *, env: dict[str, str],
                    cwd: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `command` (a server on 127.0.0.1:`port`) in its own session; yield (base URL, process) once
    `/readyz` answers 200; stop its whole group, and every worker it started, afterwards."""
    url = f"http://127.0.0.1:{port}"
    out = open(log, "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
    pids: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready:\n" + log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
        pids = {p.pid for p in descendants(proc.pid)}
        yield url, proc
    finally:
        pids |= {p.pid for p in descendants(proc.pid)}
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in pids:  # workers run in sessions of their own: never leave one behind a failed test
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
        out.close()
