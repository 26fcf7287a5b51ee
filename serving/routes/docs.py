"""The public surface besides the API: its OpenAPI document and Swagger UI, served with local assets.

- `GET /docs.json` (and `GET /v1/openapi.json`): the OpenAPI document of the `/v1` API.
- `GET /docs`: Swagger UI on it. Its script and style are served from this process (`/docs/assets/`,
  the copies BentoML ships), so it works offline and loads nothing from a third party.
- `GET /`: redirects to `/docs`. (BentoML's own index page, which loads a third-party tag-manager
  script, is never reached: the API's routes are matched first.)
Under BentoML, `HideBentoPages` answers 404 for BentoML's other pages (`/schema.json`, `/static_content/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse

from markguard.serving.limits import ApiError, request_id_of
from markguard.serving.problems import PROBLEM_JSON, send_problem

__all__ = ["router", "openapi_of", "HideBentoPages", "ASSETS"]

router = APIRouter(include_in_schema=False)
_ASSET_NAMES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "favicon-light-32x32.png": "image/png"}


def _assets() -> Path:
    from bentoml._internal import server  # BentoML ships Swagger UI's files for its own page

    return Path(server.__file__).parent / "static_content"


ASSETS = _assets()


def openapi_of(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, errors described as problem+json (FastAPI's own 422 shape replaced)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                             tags=app.openapi_tags)
        for item in schema.get("paths", {}).values():
            for operation in item.values():
                for status, response in operation.get("responses", {}).items():
                    if not str(status).startswith(("4", "5")):
                        continue
                    response["content"] = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
                    if str(status) == "422" and response.get("description") == "Validation Error":
                        response["description"] = "Invalid field or unreadable image"
        schemas = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        _mark_binary(schemas)
        for item in schema.get("paths", {}).values():  # multipart bodies refuse unknown fields (422)
            for operation in item.values():
                ref = (operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
                       .get("schema", {}).get("$ref", ""))
                if ref:
                    body = schemas[ref.rsplit("/", 1)[-1]]
                    body["additionalProperties"] = False
                    _one_or_many(body)
        app.openapi_schema = schema
    return app.openapi_schema


def _one_or_many(body: dict[str, Any]) -> None:
    """A multipart text field that may repeat (`brand` of a batch) sent once is one string on the wire,
    not distinguishable from a one-item array: say that it may be either."""
    for prop in body.get("properties", {}).values():
        for i, option in enumerate(prop.get("anyOf", [])):
            items = option.get("items", {}) if option.get("type") == "array" else {}
            if items.get("type") == "string" and items.get("format") != "binary":
                prop["anyOf"].insert(i, dict(items))
                break


def _mark_binary(node: Any) -> None:
    """Uploads as OpenAPI 3.0 tools know them too: `format: binary` beside 3.1's `contentMediaType`
    (Swagger UI and client generators then offer a file picker / a file parameter)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and node.get("contentMediaType") == "application/octet-stream":
            node["format"] = "binary"
        for value in node.values():
            _mark_binary(value)
    elif isinstance(node, list):
        for value in node:
            _mark_binary(value)


@router.get("/docs.json")
@router.get("/v1/openapi.json")
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(openapi_of(request.app))


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(openapi_url="docs.json", title="markguard API",
                               swagger_js_url="docs/assets/swagger-ui-bundle.js",
                               swagger_css_url="docs/assets/swagger-ui.css",
                               swagger_favicon_url="docs/assets/favicon-light-32x32.png",
                               swagger_ui_parameters={"tryItOutEnabled": True})


@router.get("/docs/assets/{name}")
async def swagger_asset(name: str) -> FileResponse:
    if name not in _ASSET_NAMES:
        raise ApiError(404, "no such route")
    return FileResponse(ASSETS / name, media_type=_ASSET_NAMES[name], headers={"Cache-Control": "max-age=86400"})


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("docs", status_code=307)


class HideBentoPages:
    """ASGI middleware for the BentoML service: BentoML's pages outside the documented surface answer 404
    (its service schema, which lists none of the API's routes, and its static files)."""

    HIDDEN = ("/schema.json", "/static_content")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith(self.HIDDEN):
            await send_problem(send, 404, "no such route", request_id=request_id_of(scope))
            return
        await self.app(scope, receive, send)
