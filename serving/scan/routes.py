"""`POST /scans` and `GET /scans/{id}` (platform role): scan a feed file that lies in the home's
`feeds/` folder, in a `markguard scan` process of its own, and report its progress.

Feeds and the images they name must lie under `HOME/feeds/` (symlinks resolved): a key can never make
the server read an arbitrary path. One scan runs at a time per server process.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import threading
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from markguard.serving.keys import Principal, Role
from markguard.serving.limits import ApiError
from markguard.serving.routes.deps import backend, errors, require
from markguard.serving.routes.schemas import ScanOut, ScanStartedOut
from markguard.serving.scan.feed import FEED_SUFFIXES
from markguard.vision.atomic import atomic_write_bytes

__all__ = ["router"]

_ID = re.compile(r"^[0-9a-f]{16}$")


class ScanIn(BaseModel):
    feed: str = Field(max_length=500, description="the feed's path, relative to HOME/feeds/")
    engine: Literal["local", "ray"] = "local"
    ocr: bool = True
    rescore: bool = False


router = APIRouter(tags=["scans"])
as_platform = require(Role.PLATFORM)
running: dict[str, subprocess.Popen] = {}  # this process's scans
lock = threading.Lock()


def home_of(request: Request) -> Any:
    return backend(request).home


@router.post("/scans", status_code=202, summary="Scan a feed file from the home's feeds folder",
             response_model=ScanStartedOut, responses=errors(400, 404, 409, 422))
def start_scan(request: Request, body: ScanIn, principal: Principal = as_platform) -> Any:
    """JSON `{"feed": "2026-12-03.jsonl", "engine": "local", "ocr": true, "rescore": false}`; the feed
    and its images must lie under HOME/feeds/. Returns the scan's id; poll `GET /scans/{id}`."""
    home = home_of(request)
    feeds = (home.root / "feeds").resolve()
    feed = (feeds / body.feed).resolve()
    if not feed.is_relative_to(feeds) or body.feed.startswith("/"):
        raise ApiError(400, "feed must be a path inside the home's feeds folder")
    if feed.suffix.lower() not in FEED_SUFFIXES:
        raise ApiError(422, "feed must be a .jsonl, .csv or .parquet file")
    if not feed.is_file():
        raise ApiError(404, f"no feed {body.feed!r} in the feeds folder")
    with lock:
        busy = [i for i, p in running.items() if p.poll() is None]
        if busy:
            raise ApiError(409, f"scan {busy[0]} is still running", headers={"Retry-After": "60"})
        scan_id = secrets.token_hex(8)
        out = home.root / "scans" / scan_id
        out.mkdir(parents=True)
        atomic_write_bytes(out / "request.json", json.dumps(
            {"id": scan_id, "feed": body.feed, "engine": body.engine, "ocr": body.ocr, "rescore": body.rescore,
             "key_id": principal.key_id}).encode())
        argv = [sys.executable, "-m", "markguard.serving.cli", "scan", str(feed), "--out", str(out),
                "--home", str(home.root), "--engine", body.engine, "--images-under", str(feeds), "--quiet"]
        argv += [] if body.ocr else ["--no-ocr"]
        argv += ["--rescore"] if body.rescore else []
        with open(out / "scan.log", "wb") as log:
            running[scan_id] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, start_new_session=True)
    return {"id": scan_id, "state": "starting", "feed": body.feed}

@router.get("/scans/{scan_id}", summary="A scan's progress", response_model=ScanOut, responses=errors(404))
def show_scan(request: Request, scan_id: str, _: Principal = as_platform) -> Any:
    """`state` (starting, running, finished, failed), rows done of `rows_total`, counts so far,
    photos/s; a finished scan adds its summary."""
    home = home_of(request)
    out = home.root / "scans" / scan_id
    if not _ID.match(scan_id) or not (out / "request.json").is_file():
        raise ApiError(404, f"unknown scan {scan_id!r}")
    state: dict[str, Any] = {"state": "starting"}
    if (out / "progress.json").is_file():
        state = json.loads((out / "progress.json").read_text())
    proc = running.get(scan_id)
    if proc is not None and proc.poll() not in (None, 0) and state.get("state") != "failed":
        state["state"] = "failed"
    if proc is None and state.get("state") in ("starting", "running"):
        state["state"] = "interrupted"  # not running in this server: restarted, or another worker's
    if state.get("state") == "failed":
        log = (out / "scan.log").read_bytes()[-4000:].decode(errors="replace").strip().splitlines()
        state["error"] = next((ln for ln in reversed(log) if ln.startswith("markguard: error")),
                              log[-1] if log else "the scan process failed")
    if state.get("state") == "finished":
        state["summary"] = json.loads((out / "summary.json").read_text())
    request_info = json.loads((out / "request.json").read_text())
    return {"id": scan_id, "feed": request_info["feed"], **{k: v for k, v in state.items() if k != "feed"}}
