"""Stopping `markguard serve` stops every process it started, even with a request in flight and even
when it is killed a second after SIGTERM (BentoML runs each worker in a session of its own)."""

from __future__ import annotations

import signal
import socket
import time

import psutil

from .real_server import descendants, real_server


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def test_sigterm_then_sigkill_leaves_no_worker_behind(api_home, tmp_path):
    with real_server(api_home.root, tmp_path / "serve.log", env={"MARKGUARD_OCR": "0"}) as (url, proc):
        started = [p.pid for p in descendants(proc.pid)]
        assert len(started) >= 3, started  # BentoML's process manager, the scoring worker, the embedder
        port = int(url.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port))  # a request in flight: its body never ends
        stalled.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n"
                        b"Content-Type: multipart/form-data; boundary=x\r\n"
                        b"Authorization: Bearer " + api_home.keys["platform"].encode() + b"\r\n\r\n--x\r\n")
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        if proc.poll() is None:
            proc.kill()  # the attack's stop: SIGKILL a second after SIGTERM, to the `markguard serve` process only
        proc.wait(10)
        deadline = time.monotonic() + 15
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.25)
        stalled.close()
        assert _alive(started) == [], "orphaned processes of markguard serve"
