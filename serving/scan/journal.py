"""A scan's progress journal, `DIR/journal.jsonl`: append-only, fsynced after every entry.

    {"scan": 2, "feed": ..., "feed_stat": [size, mtime_ns], "start": N}
                                                   header, once (`start`: the catalog's last listing row then)
    {"chunk": k, "before": N, "rows": [...]}       a chunk's outcomes, written BEFORE the catalog commit
    {"committed": k}                               written after it (+ "dropped": rows never recorded)

Each outcome carries its `row`, its position in the feed: what a resumed scan skips, so every feed row
has exactly one outcome however often the scan is killed. A feed changed since the header (its size or
modification time) is refused: its positions may name other rows. `before` is the catalog's highest listing row
id before the chunk's commit, so a scan killed between the two lines learns, on restart, whether its
chunk reached the catalog (rows above `before` with the same listing id and photo) and neither loses
nor records it twice. A half-written last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import array
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select

from markguard.serving.scan.record import last_listing_row
from markguard.serving.scan.worker import DoneMap
from markguard.vision.errors import MarkguardError

__all__ = ["Journal"]

_VERSION = 2  # 1: rows were known by listing id and photo, and a resume lost rows that shared them


class Journal:
    def __init__(self, out_dir: Path, *, feed: Path) -> None:
        self.path = out_dir / "journal.jsonl"
        self.feed = str(feed.resolve())
        self.next_chunk = 0
        self.start = 0
        self._fh = None

    # -- reading ---------------------------------------------------------------------------------
    def entries(self) -> Iterator[dict[str, Any]]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    return  # the last line, cut short by a kill
                yield json.loads(line)

    def committed_rows(self) -> Iterator[dict[str, Any]]:
        """Every outcome the catalog holds (or that needed no record), in journal order."""
        pending: dict[int, list[dict[str, Any]]] = {}
        for entry in self.entries():
            if "chunk" in entry:
                pending[entry["chunk"]] = entry["rows"]
            elif "committed" in entry:
                dropped = set(entry.get("dropped", []))
                for out in pending.pop(entry["committed"], []):
                    if out["row"] not in dropped:
                        yield out

    def open(self, home: Any) -> DoneMap:
        """Resume: settle chunks left between their two lines, and return what is finished."""
        header = None
        pending: dict[int, dict[str, Any]] = {}
        for entry in self.entries():
            if "scan" in entry:
                header = entry
            elif "chunk" in entry:
                pending[entry["chunk"]] = entry
                self.next_chunk = entry["chunk"] + 1
            elif "committed" in entry:
                pending.pop(entry["committed"], None)
        if header is not None and header["feed"] != self.feed:
            raise MarkguardError(f"{self.path.parent} holds a scan of {header['feed']}: give a new --out")
        if header is not None and header["scan"] != _VERSION:
            raise MarkguardError(f"{self.path.parent} holds a scan journal of an older markguard: give a new --out")
        if header is not None and header["feed_stat"] != self._feed_stat():  # rows are known by position
            raise MarkguardError(f"{self.feed} changed since the scan in {self.path.parent} began (its rows are "
                                 "resumed by position): restore it, or give a new --out")
        self._truncate_partial_line()
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held for the scan
        if header is None:
            header = {"scan": _VERSION, "feed": self.feed, "feed_stat": self._feed_stat(),
                      "start": last_listing_row(home)}
            self._append(header)
        self.start = header["start"]
        for k, entry in sorted(pending.items()):
            self._append({"committed": k, "dropped": [o["row"] for o in _not_recorded(home, entry)]})
        rows = array.array("q", (out["row"] for out in self.committed_rows()))  # 8 bytes a finished row
        return DoneMap(np.frombuffer(rows, np.int64))

    def _feed_stat(self) -> list[int]:
        """The feed's size and modification time: a feed edited in place would shift the positions."""
        stat = os.stat(self.feed)
        return [stat.st_size, stat.st_mtime_ns]

    # -- writing ---------------------------------------------------------------------------------
    def pending(self, rows: list[dict[str, Any]], *, before: int) -> int:
        k = self.next_chunk
        self.next_chunk += 1
        self._append({"chunk": k, "before": before, "rows": rows})
        return k

    def committed(self, k: int) -> None:
        self._append({"committed": k})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _append(self, entry: dict[str, Any]) -> None:
        self._fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _truncate_partial_line(self) -> None:
        if not self.path.exists() or not self.path.stat().st_size:
            return
        with open(self.path, "rb+") as fh:
            end = fh.seek(0, os.SEEK_END)
            pos, block = end, 1 << 16
            while pos > 0:  # back from the end, a block at a time, to the last newline
                start = max(0, pos - block)
                fh.seek(start)
                data = fh.read(pos - start)
                if start + len(data) == end and data.endswith(b"\n"):
                    return
                cut = data.rfind(b"\n")
                if cut >= 0:
                    fh.truncate(start + cut + 1)
                    return
                pos = start
            fh.truncate(0)


def _not_recorded(home: Any, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The scored rows of a chunk that never reached the catalog (all of them, or none: one transaction)."""
    from markguard.serving.state.schema import Listing

    scored = [o for o in entry["rows"] if o["status"] == "scored"]
    if not scored:
        return []
    with home.sessions() as session:
        found = session.scalar(
            select(func.count()).select_from(Listing).where(
                Listing.id > entry["before"],
                Listing.listing_id.in_(sorted({o["listing_id"] for o in scored})),
                Listing.image_sha256.in_(sorted({o["sha256"] for o in scored})),
            )
        )
    return [] if found else scored
