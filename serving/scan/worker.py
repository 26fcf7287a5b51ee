"""What every scorer of a scan runs on a chunk of feed rows, wherever it runs (a local worker process
or a Ray actor): check each row, read its photo, skip what is finished, score the rest with the engine
(`record=False`: the scan's one writer records), and describe each row as an outcome dict.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from markguard.vision.decode import MAX_BYTES
from markguard.vision.errors import MarkguardError

__all__ = ["ScanWorker", "DoneMap"]

MAX_ID = 200  # characters of listing, seller, brand and product names (the catalog's columns)
MAX_TITLE = 500
_URL = re.compile(r"^\s*[a-zA-Z][a-zA-Z0-9+.-]*://")


class DoneMap:
    """The feed rows a scan finished, by position in the feed (8 bytes a row): a row's listing id and
    photo cannot name it, as two rows of a feed may share both (two unreadable lines, a listing twice)."""

    def __init__(self, rows: np.ndarray | None = None) -> None:
        self.rows = np.sort(np.zeros(0, np.int64) if rows is None else np.asarray(rows, np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, row: int) -> bool:
        i = np.searchsorted(self.rows, row)
        return bool(i < len(self.rows) and self.rows[i] == row)


class ScanWorker:
    """One scorer: a `ScoringEngine` (model and index loaded once) and the scan's fixed settings."""

    def __init__(self, home_root: str, *, ocr: bool, feed_dir: str, image_root: str | None = None,
                 done: DoneMap | None = None, rescore: bool = False, threads: int | None = None,
                 ocr_gate: bool = False, runtime: str = "torch", gate_outcomes: str = "own") -> None:
        self.threads = threads
        if threads:  # every library's own pool, or scorers sharing the cores oversubscribe them
            from markguard.vision.runtime import limit_threads

            limit_threads(threads)  # in a Ray actor nothing set the environment before its imports
        from markguard.serving.state.home import Home

        self.home = Home(home_root)
        self.ocr = ocr
        self.ocr_gate = ocr_gate
        self.runtime = runtime
        self.gate_outcomes = gate_outcomes
        self._engine = None  # loaded on the first row that needs scoring (a resume may need none)
        self.feed_dir = Path(feed_dir)
        self.image_root = Path(image_root).resolve() if image_root else None
        self.done = done or DoneMap()
        self.rescore = rescore

    @property
    def engine(self):  # noqa: ANN201 - a ScoringEngine, imported late
        if self._engine is None:
            from markguard.serving.engine import ScoringEngine
            from markguard.vision.pipeline import OcrGate

            self._engine = ScoringEngine(self.home, ocr=self.ocr, ocr_gate=OcrGate(outcomes=self.gate_outcomes) if self.ocr_gate else None,
                                         runtime=self.runtime)
            if self.threads:
                from markguard.vision.runtime import limit_threads

                limit_threads(self.threads)  # and the pools the engine's libraries started
        return self._engine

    def process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One outcome per row, in order: `status` is scored, unchanged, done (finished earlier) or error.
        The first outcome carries the chunk's process CPU seconds (`cpu`: by pipeline stage, `worker` in
        all, `busy` the wall seconds the chunk took, and `ocr_photos`, the photos whose text was read)."""
        started, wall = time.process_time(), time.perf_counter()
        stages = dict(self._engine.scorer.stage_cpu) if self._engine is not None else {}
        runs = list(self._engine.scorer.ocr_runs) if self._engine is not None else [0, 0, 0]
        outcomes = self._process(rows)
        if outcomes:
            cpu = {"worker": time.process_time() - started, "busy": time.perf_counter() - wall}
            if self._engine is not None:
                scorer = self._engine.scorer
                cpu |= {k: v - stages.get(k, 0.0) for k, v in scorer.stage_cpu.items()}
                cpu["ocr_photos"] = scorer.ocr_runs[0] - runs[0]
                cpu["ocr_probes"] = scorer.ocr_runs[2] - runs[2]
            outcomes[0]["cpu"] = cpu
        return outcomes

    def _process(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from markguard.serving.engine import ScoreRequest

        outcomes: list[dict[str, Any]] = []
        claims: dict[tuple[str, str | None], bool] = {}
        pending: list[tuple[dict[str, Any], ScoreRequest]] = []
        for row in rows:
            out = {"row": row["row"], "listing_id": row["listing_id"], "seller_id": row["seller_id"],
                   "image": row["image"], "sha256": None, "status": "error", "error": row.get("error"),
                   "score": None, "phash": None}
            outcomes.append(out)
            if row["row"] in self.done:
                out["status"] = "done"
                continue
            if out["error"] is None:
                try:
                    data = self._check_and_read(row, out)
                except MarkguardError as exc:
                    out["error"] = str(exc)
            if out["error"] is not None:
                continue
            try:  # what would fail the chunk's batch fails its row here: the claim (the pixels: in `_score`)
                request = ScoreRequest(data, brand=row["brand"], product=row["product"], seller=row["seller_id"],
                                       listing=row["listing_id"], title=row["title"], label=row["image"])
                self._check_claim(row["brand"], row["product"], claims)
            except (ValueError, MarkguardError) as exc:
                out["error"] = str(exc)
                continue
            pending.append((out, request))
        pending = self._unchanged(pending)
        for out, request, result in self._score(pending):
            if isinstance(result, str):
                out.update(error=result, phash=None)
                continue
            out.update(status="scored", score=result.to_dict(), brand_id=result.brand_id)
            self.home.put_blob(request.data)  # kept, as `/score` keeps it, so a review can use the photo
        return outcomes

    def _check_claim(self, brand: str | None, product: str | None, known: dict) -> None:
        """Unknown brand or product: NotFound, as the engine would raise it (looked up once a chunk)."""
        from markguard.serving.brands import get_brand, get_product

        if brand is None or (brand, product) in known:
            return
        with self.home.sessions() as session:
            row = get_brand(session, brand)
            if product is not None:
                get_product(session, row, product)
        known[(brand, product)] = True

    # -- steps ---------------------------------------------------------------------------------
    def _check_and_read(self, row: dict[str, Any], out: dict[str, Any]) -> bytes:
        if not row["listing_id"]:
            raise MarkguardError("missing listing_id")
        for name in ("listing_id", "seller_id", "brand", "product"):
            if row[name] is not None and len(row[name]) > MAX_ID:
                raise MarkguardError(f"{name} longer than {MAX_ID} characters")
        if row["title"] is not None and len(row["title"]) > MAX_TITLE:
            raise MarkguardError(f"title longer than {MAX_TITLE} characters")
        if not row["image"]:
            raise MarkguardError("missing image")
        if _URL.match(row["image"]):
            raise MarkguardError("image is a URL: scans read local files only")
        data = self._read(row["image"])
        out["sha256"] = hashlib.sha256(data).hexdigest()
        return data

    def _read(self, name: str) -> bytes:
        try:
            path = (self.feed_dir / name).resolve()
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the name (Ray's rows are cleaned alike)
            raise MarkguardError(f"image path unusable: {exc}") from None
        if self.image_root is not None and not path.is_relative_to(self.image_root):
            raise MarkguardError("image lies outside the feed's folder")
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_BYTES + 1)
        except IsADirectoryError:
            raise MarkguardError("image is a directory") from None
        except FileNotFoundError:
            raise MarkguardError("image file not found") from None
        except OSError as exc:
            raise MarkguardError(f"image unreadable: {exc.strerror or exc}") from None
        if len(data) > MAX_BYTES:
            raise MarkguardError(f"image larger than the {MAX_BYTES}-byte limit")
        return data

    def _unchanged(self, pending: list) -> list:
        """Drop (and mark `unchanged`) listings the catalog already holds with this photo and model."""
        from markguard.serving.state.schema import Brand, Listing

        if self.rescore or not pending:
            return pending
        ids = sorted({o["listing_id"] for o, _ in pending})
        with self.home.sessions() as session:
            rows = session.execute(
                select(Listing.listing_id, Listing.image_sha256, Listing.risk, Listing.decision, Brand.name)
                .outerjoin(Brand, Brand.id == Listing.brand_id)
                .where(Listing.listing_id.in_(ids), Listing.model_tag == self.engine.model_tag)
                .order_by(Listing.id)
            ).all()
        known = {(r.listing_id, r.image_sha256): r for r in rows}
        left = []
        for out, request in pending:
            hit = known.get((out["listing_id"], out["sha256"]))
            if hit is None:
                left.append((out, request))
            else:
                out.update(status="unchanged", score={"risk": hit.risk, "decision": hit.decision,  # as recorded
                                                      "brand": {"name": hit.name}, "model": self.engine.model_tag})
        return left

    def _score(self, pending: list) -> list[tuple[dict[str, Any], Any, Any]]:
        """(outcome, request, result or error message) per request: each photo planned (decoded once: its
        hash comes from the plan) on its own, so one bad photo never fails its neighbours, then the
        chunk's regions embedded in one batch and each photo judged."""
        if not pending:
            return []
        engine = self.engine
        engine.refresh()
        out: list[tuple[dict[str, Any], Any, Any]] = []
        planned = []
        for o, q in pending:
            try:
                planned.append((o, q, engine.plan(q)))
            except (ValueError, MarkguardError) as exc:
                out.append((o, q, str(exc)))
        vectors = engine.scorer.embed_plans([p for _, _, p in planned])
        for (o, q, plan), v in zip(planned, vectors, strict=True):
            try:
                result = engine.finish(plan, v, record=False)
            except MarkguardError as exc:
                out.append((o, q, str(exc)))
                continue
            o["phash"] = plan.photo_hash
            out.append((o, q, result))
        return out
