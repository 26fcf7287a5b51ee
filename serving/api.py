"""The HTTP API (FastAPI, mounted into the BentoML service): routers over one auth dependency.

Every route lives under `/v1` (`serving/routes/`, one router per resource, plus the intelligence and
scan routers). The unversioned paths of before `/v1` still answer, as deprecated aliases left out of
the schema. Scoring's forward pass goes through `Backend.embed`, which in the service is the batchable
BentoML API of `Embedder` (adaptive batching across requests). The key in `Authorization: Bearer`
decides the role and the tenant: a brand key sees only its own brand, and another brand's objects
answer 404, as if they did not exist. Every error is `application/problem+json` (`routes/errors.py`).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse

from markguard.serving.budget import RequestBudgets
from markguard.serving.console import build_console
from markguard.serving.intelligence.api import router as intelligence_router
from markguard.serving.metrics import install_metrics
from markguard.serving.routes import brands, docs, keys, references, reviews, scoring
from markguard.serving.routes.deps import Backend, local_embed
from markguard.serving.routes.errors import install_error_handlers
from markguard.serving.routes.listings import router as listings_router
from markguard.serving.scan.routes import router as scans_router

__all__ = ["Backend", "build_app", "local_embed", "API_PREFIX"]

API_PREFIX = "/v1"


def mount(app: FastAPI, router: APIRouter) -> None:
    """`router` under `/v1`, and at its unversioned paths as deprecated aliases, hidden from the schema."""
    app.include_router(router, prefix=API_PREFIX)
    app.include_router(router, deprecated=True, include_in_schema=False)


def build_app(backend: Backend | None = None) -> FastAPI:
    """The API; `backend` may be attached later as `app.state.backend` (the service does, per worker)."""
    app = FastAPI(title="markguard", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  generate_unique_id_function=lambda route: route.name,  # operation ids: `score`, `new_key`
                  redirect_slashes=False,  # `/v1/brands/` is an unknown route (404), not an undocumented 307
                  description="Scoring and management API, under `/v1`. Every route needs `Authorization: Bearer "
                              "<key>`; errors are `application/problem+json` (RFC 9457) with a stable `code`.")
    app.state.backend = backend
    install_metrics(app)  # `/metrics`, and request counts by route template
    app.add_middleware(RequestBudgets)  # decoded pixels per request and per process (serving.budget)
    install_error_handlers(app)
    app.openapi = lambda: docs.openapi_of(app)  # type: ignore[method-assign]
    mount(app, scoring.router)
    mount(app, brands.router)
    mount(app, references.router)
    mount(app, reviews.router)
    mount(app, keys.router)
    mount(app, listings_router)
    mount(app, scans_router)
    mount(app, intelligence_router)
    app.include_router(docs.router)  # `/docs.json`, `/docs`, `/`
    app.mount("/console", build_console(app))  # the web console (markguard.serving.console)
    app.add_api_route("/console", lambda: RedirectResponse("/console/", status_code=303), methods=["GET"],
                      include_in_schema=False)  # the address README gives (the mount answers under `/console/`)
    return app
