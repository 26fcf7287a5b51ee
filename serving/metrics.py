"""markguard's Prometheus metrics and the `/metrics` route that serves them with BentoML's.

Plain `prometheus_client` metrics: BentoML sets PROMETHEUS_MULTIPROC_DIR before it starts the workers,
so each worker writes its values to that folder and `/metrics` adds up every worker's counts (the
embedder's adaptive-batching histograms included).

`/metrics` is public, so every label takes values from a small fixed set: HTTP requests are counted by
route *template* (`/brands/{brand}/references`, never the path asked for; every unknown path shares
`unmatched`), method and status, and decisions by decision only (no brand names). BentoML's own HTTP
middleware labels by raw path (one set of series per distinct URL, 404s included), so the entry
service turns it off (`metrics={"enabled": False}`) and this module's `RouteMetrics` replaces it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.concurrency import run_in_threadpool

__all__ = ["LISTINGS_SCORED", "DECISIONS", "OCR_SECONDS", "INDEX_SIZE", "EMBED_BATCH", "HTTP_REQUESTS",
           "HTTP_SECONDS", "RouteMetrics", "install_metrics", "route_label"]

LISTINGS_SCORED = Counter(
    "markguard_listings_scored", "Listing photos scored", labelnames=["route"])
DECISIONS = Counter(
    "markguard_decisions", "Decisions (no brand label: /metrics is public)", labelnames=["decision"])
OCR_SECONDS = Histogram(
    "markguard_ocr_seconds", "Seconds reading one photo's text (the engine's on_ocr_seconds; cached photos not counted)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0))
INDEX_SIZE = Gauge(
    "markguard_index_size", "Reference vectors in the loaded index",
    multiprocess_mode="max")
EMBED_BATCH = Histogram(
    "markguard_embed_batch_size", "Crops per forward pass of the batched embedder",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
HTTP_REQUESTS = Counter(
    "markguard_http_requests", "HTTP requests by route template, method and status",
    labelnames=["route", "method", "status"])
HTTP_SECONDS = Histogram(
    "markguard_http_request_seconds", "HTTP request duration by route template",
    labelnames=["route"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0))

UNMATCHED = "unmatched"  # the one label of every path no route serves
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope: dict[str, Any]) -> str:
    """The template of the route that served the request (set by the router), else `unmatched`. A route
    of an included router (FastAPI includes them lazily) carries its path without the include's prefix:
    FastAPI's effective route context has the full template (`/v1/brands/{brand}`, not `/brands/{brand}`)."""
    context = scope.get("fastapi", {}).get("effective_route_context") if isinstance(scope.get("fastapi"), dict) else None
    path = getattr(context, "path_format", None) or getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


class RouteMetrics:
    """ASGI middleware: one count and one duration per request, labelled by route template. The API app
    has one (`install_metrics`); the service adds one outside BentoML's router too, so paths no route
    serves are counted (as `unmatched`), and each request is counted once, by the outermost."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("markguard.counted"):  # counted by an outer RouteMetrics
            await self.app(scope, receive, send)
            return
        scope["markguard.counted"] = True
        started, status = time.perf_counter(), 500

        async def send_counted(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            route = route_label(scope)
            method = scope.get("method") if scope.get("method") in _METHODS else "other"
            HTTP_REQUESTS.labels(route=route, method=method, status=str(status if 100 <= status < 600 else 500)).inc()
            HTTP_SECONDS.labels(route=route).observe(time.perf_counter() - started)


def _exposition() -> bytes:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:  # one process (tests, `build_app` on its own): this process's registry
        return generate_latest(REGISTRY)
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=folder)
    return generate_latest(registry)


def install_metrics(app: Any) -> None:
    """Count `app`'s requests by route template and serve `/metrics` (Prometheus text, every worker's)."""
    app.add_middleware(RouteMetrics)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (no brand names; bounded labels)",
             response_class=Response, response_model=None, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        return Response(await run_in_threadpool(_exposition), media_type=CONTENT_TYPE_LATEST)
