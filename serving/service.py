"""The BentoML service: `bentoml serve markguard.serving.service:Markguard` (or `markguard serve`).

Two services in one deployment:
- `Embedder` holds the model and answers one batchable API, `embed`: BentoML's adaptive batching
  merges the crops of concurrent requests into shared forward passes.
- `Markguard` (the entry service, `MARKGUARD_WORKERS` workers) holds the scoring engine (model, OCR
  reader, index, catalog) and serves the HTTP API of `markguard.serving.api` (under `/v1`, with its
  OpenAPI document at `/docs.json` and Swagger UI at `/docs`), mounted at `/`; its forward passes go
  to `Embedder`. BentoML's own pages besides its probes (`/schema.json`, `/static_content/`) answer 404,
  and its index page is never reached (`/` redirects to `/docs`): see `serving/routes/docs.py`. `MARKGUARD_BATCHING=0` runs them in the worker instead, one per
  request (the naive baseline of `markguard bench serve`).

The model comes from the BentoML model store: the service declares `MODEL_TAG` (`MARKGUARD_MODEL`, else
the home's promoted model, else the shipped default; inside a Bento, the model it pins) as a
`bentoml.models.BentoModel`, so `bentoml build` lists it and the Bento carries it; each process installs
it into the home (SHA-256 checked, registered, promoted: `registry.install_stored_model`) before loading.
`MARKGUARD_ADMIN_KEY` creates the first admin key at start-up (`serving.bootstrap`).

Each worker loads everything in `__init__`, and `__is_ready__` checks it (model, index, and the OCR
reader when on), so BentoML's `/readyz` answers 200 only once all is loaded.

Torch, FAISS and OpenCV threads are set per process (BentoML does not divide cores between workers).
`Embedder` runs `MARKGUARD_EMBED_WORKERS` processes (default: one per core, at most 4) of
`MARKGUARD_EMBED_THREADS` threads (default: the cores shared among them; 1 on up to 4 cores), and each
scoring worker one thread (`MARKGUARD_WORKER_THREADS`): a worker's own work
(HTTP, decode, resize) is light, and a multi-threaded forward pass stalls at every OpenMP barrier whenever
another process takes one of its cores. On 2 cores, `markguard bench serve` (concurrency 16, embedding
only) measured 16 images/s with one 1-thread embedder, 15-19 with one 2-thread embedder (passive OpenMP
waits or not) and 29 with two 1-thread embedders.

Batches are small by default on CPU (`MARKGUARD_MAX_BATCH`, crops per forward pass; larger inputs are
split): Lite0 at 224 px on 2 EPYC cores ran 55 images/s at batch 4, 40 at batch 8 and 32 at batch 16, as a
large batch's activations leave the cache. On a GPU raise it.
"""

from __future__ import annotations

import os

import aiohttp
import bentoml
import numpy as np

from markguard.serving.api import Backend, build_app, local_embed
from markguard.serving.lifecycle import die_with_parent
from markguard.serving.limits import GuardMiddleware, RateLimiter, configure_logging, log
from markguard.serving.metrics import RouteMetrics
from markguard.serving.ratelimit import storage_url_for_home
from markguard.serving.registry import served_model_tag
from markguard.serving.routes.docs import HideBentoPages
from markguard.serving.settings import get_settings

__all__ = ["Markguard", "Embedder"]

SETTINGS = get_settings()  # checked here, at start-up: a bad MARKGUARD_* value stops the service
WORKERS = SETTINGS.workers
MAX_BATCH = SETTINGS.max_batch  # crops per forward pass (CPU; see above)
MAX_LATENCY_MS = SETTINGS.max_latency_ms  # a batch's wait budget
_CORES = os.cpu_count() or 1
# embedder processes: one per core up to 4 (each holds its own torch and model, ~0.7 GB), then more threads each
EMBED_WORKERS = SETTINGS.embed_workers or min(_CORES, 4)
EMBED_THREADS = SETTINGS.embed_threads or SETTINGS.threads or max(1, _CORES // EMBED_WORKERS)
# the model this service serves, from the BentoML model store (saved there first if missing; see above)
MODEL_TAG = SETTINGS.model or served_model_tag(SETTINGS.home, database_url=SETTINGS.database_url)
# BentoML's access log would log each request a second time, under another id: GuardMiddleware's one line
_NO_ACCESS_LOG = {"access": {"enabled": False}}


def _home():
    from markguard.serving.state.home import Home

    return Home(SETTINGS.home)


def _install(home, stored) -> None:  # type: ignore[no-untyped-def]
    """The declared model (a BentoML stored model) as the home's promoted model, hashes checked."""
    from markguard.serving.registry import install_stored_model

    install_stored_model(home, stored.path, expected_sha256=stored.info.metadata.get("weights_sha256"),
                         expected_settings=stored.info.metadata.get("settings_sha256"))


@bentoml.service(name="markguard-embedder", workers=EMBED_WORKERS, traffic={"timeout": 120}, logging=_NO_ACCESS_LOG)
class Embedder:
    """The model behind adaptive batching: (N, S, S, 3) uint8 crops → (N, dim) unit vectors."""

    stored_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from markguard.serving.registry import promoted_artifact
        from markguard.vision.runtime import limit_threads

        die_with_parent()  # no orphan when BentoML's process manager is killed (serving.lifecycle)
        limit_threads(EMBED_THREADS)
        home = _home()
        _install(home, self.stored_model)
        artifact = promoted_artifact(home)
        self.model = artifact.load_embedder(device="cpu", fuse=True)
        limit_threads(EMBED_THREADS)  # and the pools loading the model started

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def embed(self, crops: np.ndarray) -> np.ndarray:
        import torch

        from markguard.serving.metrics import EMBED_BATCH
        from markguard.vision.embed import preprocess

        EMBED_BATCH.observe(len(crops))
        with torch.inference_mode():
            return self.model(preprocess(list(crops), self.model.config)).float().numpy()


def _bootstrap_admin(home, key: str) -> None:  # type: ignore[no-untyped-def]
    from markguard.serving.bootstrap import bootstrap_admin_key, parse_key

    outcome = bootstrap_admin_key(home, key)
    log.info("admin key bootstrap", extra={"fields": {"key_id": parse_key(key)[0], "outcome": outcome}})


api_app = build_app()


# BentoML's HTTP metrics label by raw path (series without bound on a public route): ours, by route
# template, and our `/metrics` replace them (markguard.serving.metrics)
@bentoml.service(name="markguard", workers=WORKERS, traffic={"timeout": 120}, metrics={"enabled": False},
                 logging=_NO_ACCESS_LOG)
@bentoml.asgi_app(api_app, path="/")
class Markguard:
    embedder = bentoml.depends(Embedder)
    stored_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from markguard.serving.engine import ScoringEngine
        from markguard.serving.metrics import INDEX_SIZE, OCR_SECONDS
        from markguard.vision.runtime import limit_threads

        die_with_parent()  # no orphan when BentoML's process manager is killed (serving.lifecycle)
        configure_logging()
        naive = not SETTINGS.batching
        # the naive baseline runs its forward passes here, one per request, side by side in threads
        threads = SETTINGS.worker_threads or SETTINGS.threads or 1
        limit_threads(threads)
        self.ocr_on = SETTINGS.ocr
        home = _home()
        _install(home, self.stored_model)
        if SETTINGS.admin_key is not None:
            _bootstrap_admin(home, SETTINGS.admin_key.get_secret_value())
        from markguard.vision.pipeline import OcrGate

        engine = ScoringEngine(home, ocr=self.ocr_on, on_ocr_seconds=OCR_SECONDS.observe,
                               ocr_gate=OcrGate() if SETTINGS.ocr_gate else None)
        self.engine = engine
        limit_threads(threads)  # and the pools the engine's libraries started
        INDEX_SIZE.set(engine.index_size)
        if naive:
            embed = local_embed(engine)
        else:
            async def embed(crops: np.ndarray) -> np.ndarray:
                try:
                    return await self.embedder.to_async.embed(crops)
                except aiohttp.ClientConnectionError:  # a keep-alive connection the embedder had closed
                    return await self.embedder.to_async.embed(crops)  # idempotent: retry once

        # one budget per key for every worker of the home (a SQLite file in it, or the PostgreSQL catalog)
        limiter = RateLimiter(rate=SETTINGS.rate, burst=SETTINGS.burst,
                              storage_url=storage_url_for_home(str(home.root), SETTINGS.database_url))
        api_app.state.backend = Backend(engine=engine, embed=embed, limiter=limiter)
        log.info("worker ready", extra={"fields": {"model": engine.model_tag, "ocr": self.ocr_on,
                                                   "index_size": engine.index_size, "batching": not naive}})

    def __is_ready__(self) -> bool:
        """BentoML's `/readyz`: the model, the index and (when on) the OCR reader are loaded. Each probe
        also refreshes the index-size gauge, so it follows enrollments between scoring calls."""
        from markguard.serving.metrics import INDEX_SIZE

        engine = self.engine
        INDEX_SIZE.set(engine.index_size)
        return engine.model is not None and engine.index is not None and (engine.ocr is not None or not self.ocr_on)


Markguard.add_asgi_middleware(GuardMiddleware)
Markguard.add_asgi_middleware(HideBentoPages)  # one documented public surface (serving.routes.docs)
Markguard.add_asgi_middleware(RouteMetrics)  # every request, BentoML's routes and unknown paths too
