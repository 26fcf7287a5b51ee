"""A writer to kill: runs one write on a home through the CLI (or `record_review`) and, when POINT is
given, stops at that point of the write until the test SIGKILLs it.

    python fault_child.py HOME MARKER POINT OP ARGS...

POINT names the step, whatever order the code takes them in (the hooks wrap the writes themselves):
`blob` (a blob written), `catalog-before` / `catalog-after` (around the first commit that wrote rows;
`:2` for the second), `index-files` (a new index version written, its manifest not yet), `index-after`
(the manifest written), `serial-chunk` (the first chunk of serials inserted), `none` (run to the end).
When the child reaches the point it writes the point's name to MARKER and sleeps.
OP: `enroll BRAND PATH...`, `delete BRAND ID`, `serials BRAND FILE`, `review LISTING_ID`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    home, marker, point, op, *args = argv
    name, _, nth = point.partition(":")
    occurrence = int(nth or 1)

    def stop(reached: str) -> None:
        if reached == name:
            Path(marker).write_text(point)
            while True:
                time.sleep(60)

    _install_hooks(name, occurrence, stop)
    if op == "review":
        from markguard.serving.registry import ensure_default_model
        from markguard.serving.reviews import record_review
        from markguard.serving.state.home import Home
        from markguard.serving.state.schema import ReferenceKind

        h = Home(home)
        artifact = ensure_default_model(h)
        report = record_review(h, artifact, artifact.load_embedder(fuse=True), listing_id=args[0],
                               label=ReferenceKind.COUNTERFEIT, reviewer_key_id="fault-test")
        print(report.reference_id, flush=True)
        return 0
    from markguard.serving.cli import main as cli

    commands = {"enroll": ["enroll", args[0], *args[1:]], "delete": ["reference", "delete", *args],
                "serials": ["serials", "import", *args]}
    return cli([*commands[op], "--home", home])


def _install_hooks(name: str, occurrence: int, stop) -> None:  # noqa: ANN001
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

    from markguard.serving import serials
    from markguard.serving.state.home import Home
    from markguard.vision import index

    state = {"wrote": False, "commits": 0}

    @event.listens_for(Engine, "before_cursor_execute")
    def _writes(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            state["wrote"] = True

    @event.listens_for(Session, "before_commit")
    def _before(session) -> None:  # noqa: ANN001
        if state["wrote"]:
            state["commits"] += 1
            if state["commits"] == occurrence:
                stop("catalog-before")

    @event.listens_for(Session, "after_commit")
    def _after(session) -> None:  # noqa: ANN001
        if state["wrote"]:
            state["wrote"] = False
            if state["commits"] == occurrence:
                stop("catalog-after")

    put_blob = Home.put_blob

    def put_blob_then_stop(self, data: bytes) -> str:  # noqa: ANN001
        digest = put_blob(self, data)
        stop("blob")
        return digest

    Home.put_blob = put_blob_then_stop
    write = index.atomic_write_bytes

    def write_then_stop(path, data, **kwargs) -> None:  # noqa: ANN001
        if Path(path).name == "manifest.json":
            stop("index-files")
        write(path, data, **kwargs)
        if Path(path).name == "manifest.json":
            stop("index-after")

    index.atomic_write_bytes = write_then_stop
    insert = serials._insert_ignoring_duplicates

    def insert_then_stop(session, rows) -> None:  # noqa: ANN001
        insert(session, rows)
        stop("serial-chunk")

    serials._insert_ignoring_duplicates = insert_then_stop
    serials.CHUNK = 50  # several chunks from a small file


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
