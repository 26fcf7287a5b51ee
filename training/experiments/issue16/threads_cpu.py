"""Where a scorer's CPU goes, thread by thread: runs `markguard bench scan` (any arguments after `--`)
and samples /proc every half second for every process on the machine, keeping each thread's
user+system time used while the bench ran (its last reading less its reading before the bench
started). Prints, for each process that used more than `--min-cpu` seconds, its command, its CPU in
all and its busiest threads by name, and writes them as JSON.

Made for issue 16's open question: Ray actors spend 9-16% more CPU a photo than local scorers running
the same `ScanWorker` on the same photos.

    .venv/bin/python training/experiments/issue16/threads_cpu.py --out runs/issue16/threads.json \\
        -- --paths local,ray --photos 150
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _threads(pid: str) -> dict[str, tuple[str, float]]:
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[tid] = (name, (int(fields[11]) + int(fields[12])) / _TICK)  # utime, stime
    return out


def _command(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
    except OSError:
        return "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-cpu", type=float, default=2.0)
    parser.add_argument("bench", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    bench = [a for a in args.bench if a != "--"]
    me = str(os.getpid())
    seen: dict[str, dict] = {}  # pid -> command, threads {tid: (name, cpu)}
    before = {(pid, tid): cpu for pid in filter(str.isdigit, os.listdir("/proc")) for tid, (_, cpu) in _threads(pid).items()}
    child = subprocess.Popen([sys.executable, "-m", "markguard.serving.cli", "bench", "scan", *bench])
    while child.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if pid == me:
                continue
            threads = _threads(pid)
            if not threads:
                continue
            entry = seen.setdefault(pid, {"command": _command(pid), "threads": {}})
            entry["threads"].update({tid: (name, cpu - before.get((pid, tid), 0.0)) for tid, (name, cpu) in threads.items()})
        time.sleep(0.5)
    report = []
    for pid, entry in seen.items():
        total = sum(cpu for _, cpu in entry["threads"].values())
        if total < args.min_cpu:
            continue
        by_name: dict[str, float] = collections.defaultdict(float)
        for name, cpu in entry["threads"].values():
            by_name[name] += cpu
        report.append({"pid": int(pid), "command": entry["command"], "cpu": round(total, 2),
                       "threads": dict(sorted(((n, round(c, 2)) for n, c in by_name.items()), key=lambda x: -x[1]))})
    report.sort(key=lambda r: -r["cpu"])
    for r in report:
        print(f"{r['cpu']:8.2f} s  pid {r['pid']}  {r['command'][:100]}")
        for name, cpu in list(r["threads"].items())[:8]:
            print(f"           {cpu:8.2f}  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return child.returncode


if __name__ == "__main__":
    raise SystemExit(main())
