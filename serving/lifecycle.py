"""Stopping `markguard serve` stops every process it started, however it is stopped.

BentoML's process manager (circus) starts each worker in its own session and, on SIGTERM, waits up
to a day for a worker to finish gracefully; killed outright, it leaves its workers running as
orphans. So the chain is tied by the kernel: `markguard serve` runs BentoML as a child that gets
SIGKILL when `markguard serve` dies (`PR_SET_PDEATHSIG`), each worker does the same towards BentoML
(`die_with_parent`, called as it starts), and a SIGTERM or SIGINT is passed on to BentoML for a
graceful stop of at most `stop_timeout` seconds, after which BentoML, and with it every worker, is
killed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

__all__ = ["die_with_parent", "supervise"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send `sig` to this process when its parent exits (Linux; elsewhere nothing);
    exit now if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before the setting took
        os._exit(1)


def supervise(argv: Sequence[str], *, stop_timeout: float, env: dict[str, str] | None = None) -> int:
    """Run `argv` as a child tied to this process; pass SIGTERM, SIGINT and SIGHUP on to it, and kill
    it when it has not exited `stop_timeout` seconds after the first. Returns its exit code."""
    child = subprocess.Popen(list(argv), env=env, preexec_fn=die_with_parent)  # noqa: PLW1509 - no threads yet
    stopping_since: list[float] = []

    def forward(signum: int, _frame: object) -> None:
        if not stopping_since:
            stopping_since.append(time.monotonic())
        try:
            child.send_signal(signal.SIGINT if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            return child.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping_since and time.monotonic() - stopping_since[0] > stop_timeout:
                child.kill()  # its workers follow it (each has PR_SET_PDEATHSIG towards it)
                return child.wait()
