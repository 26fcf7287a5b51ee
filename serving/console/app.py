"""The console's pages: server-rendered (Jinja2), plain forms, one small script (keyboard shortcuts and the
upload progress bar). Every answer, error pages included, carries a strict Content-Security-Policy (set
outside the error layer); every form carries the session's CSRF token; a brand session reaches only its own
brand's pages and images (others answer 404). A notice for the next page travels in a signed cookie, never
in the URL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import tempfile
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from markguard.serving.console import queries
from markguard.serving.console.sessions import (
    COOKIE,
    FLASH_COOKIE,
    FLASH_SECONDS,
    PRE_COOKIE,
    flash_text,
    flash_token,
    issue,
    login_csrf,
    principal_of,
    revoke,
    same,
    verify,
)
from markguard.serving.keys import Principal, Role, authenticate
from markguard.serving.limits import ApiError
from markguard.serving.listings import (
    ListingFilters,
    ListingPage,
    claim_listing,
    evidence_png,
    list_listings,
    listing_detail,
    listing_photo,
    reference_photo,
)
from markguard.serving.problems import BUSY_RETRY_AFTER_S, catalog_busy
from markguard.serving.redact import public_message
from markguard.serving.settings import get_settings
from markguard.serving.state.schema import ReferenceKind
from markguard.vision.errors import Conflict, MarkguardError, NotFound

__all__ = ["build_console"]

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
_PRIVATE = {"Cache-Control": "private, no-store"}
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_ENV.filters["pct"] = lambda x: "" if x is None else f"{100 * float(x):.1f}%"
_ENV.filters["num"] = lambda x: "" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))


class PageError(Exception):
    """An error answered as a page (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class _Secured:
    """The console's security headers on every answer it sends, the error layer's 500 page included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                # an image or download opened on its own: no script at all; Chromium's image viewer styles inline
                headers["Content-Security-Policy"] = CSP if html else FILE_CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                headers["Cross-Origin-Resource-Policy"] = "same-origin"
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send=secured)
        except Exception:
            if not started:
                raise
            # answered (the 500 page) and logged by `_unexpected`; Starlette raises it again after answering


class _Console(FastAPI):
    """FastAPI, with `_Secured` outside its error layer (user middleware runs inside it)."""

    def build_middleware_stack(self) -> ASGIApp:
        return _Secured(super().build_middleware_stack())


class _SignIn(Exception):
    """Not signed in: a page redirects to the sign-in form."""


@dataclasses.dataclass
class Who:
    principal: Principal
    csrf: str

    @property
    def role(self) -> Role:
        return self.principal.role

    @property
    def scope(self) -> int | None:
        """The brand a brand session is limited to; None for staff."""
        return self.principal.brand_id if self.principal.role is Role.BRAND else None

    def can(self, *roles: Role) -> bool:
        return self.principal.role is Role.ADMIN or self.principal.role in roles


def build_console(parent: FastAPI) -> FastAPI:
    """The console app, mounted at `/console`; it reads the parent's backend (`parent.state.backend`)."""
    app = _Console(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def backend() -> Any:
        b = parent.state.backend
        if b is None:
            raise PageError(503, "the service is starting; try again shortly")
        return b

    def home() -> Any:
        return backend().home

    def render(request: Request, name: str, who: Who | None, status: int = 200, **context: Any) -> HTMLResponse:
        """The page, with the notice of the flash cookie the URL's `notice` id names (text only we signed)."""
        flash, b = request.cookies.get(FLASH_COOKIE), parent.state.backend
        message = flash_text(b.home, flash, request.query_params.get("notice")) if flash and b is not None else None
        html = _ENV.get_template(name).render(
            who=who, Role=Role, csrf=who.csrf if who else "", base="/console", message=message,
            path=request.url.path, **context)
        return HTMLResponse(html, status_code=status)

    def flashed(target: str, message: str) -> RedirectResponse:
        """A 303 to `target` whose page shows `message`: the text in a signed cookie, only its id in the URL
        (the upload's script follows the redirect before the browser goes there: the notice survives it)."""
        token, notice = flash_token(home(), message)
        response = RedirectResponse(_with_params(target, notice=notice), status_code=303)
        cookie(response, FLASH_COOKIE, token, max_age=FLASH_SECONDS)
        return response

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> HTMLResponse:
        return render(request, "error.html", _who_or_none(request), status=exc.status, status_code=exc.status,
                      error=exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        message = "not found" if exc.status_code == 404 else public_message(str(exc.detail))
        return render(request, "error.html", _who_or_none(request), status=exc.status_code,
                      status_code=exc.status_code, error=message)

    @app.exception_handler(OperationalError)
    async def _database(request: Request, exc: OperationalError) -> HTMLResponse:
        if not catalog_busy(exc):  # not ours to explain: the server's 500, logged
            raise exc
        page = render(request, "error.html", _who_or_none(request), status=503, status_code=503,
                      error="the catalog is busy with another write; try again shortly")
        page.headers["Retry-After"] = str(BUSY_RETRY_AFTER_S)
        return page

    @app.exception_handler(_SignIn)
    async def _sign_in(request: Request, exc: _SignIn) -> Response:
        if request.method != "GET":
            return render(request, "error.html", None, status=401, status_code=401, error="sign in first")
        target = "/console/login?next=" + urllib.parse.quote(_local(request.url.path + (
            "?" + request.url.query if request.url.query else "")))
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        """A path parameter of the wrong type (`/listings/abc`) names nothing: 404; other bad input 422."""
        in_path = all(e.get("loc", ("",))[0] == "path" for e in exc.errors())
        status = 404 if in_path else 422
        return render(request, "error.html", _who_or_none(request), status=status, status_code=status,
                      error="not found" if in_path else "the request's parameters are not valid")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTMLResponse:
        """Anything else: logged, and the error page (never the exception's text) with 500."""
        log.error("console: unhandled error", exc_info=exc, extra={"fields": {"path": request.url.path}})
        try:
            who = _who_or_none(request)
        except Exception:  # noqa: BLE001 - the page must not fail for want of the user's name
            who = None
        return render(request, "error.html", who, status=500, status_code=500, error="internal error")

    @app.exception_handler(MarkguardError)
    async def _known(request: Request, exc: MarkguardError) -> HTMLResponse:
        status = 404 if isinstance(exc, NotFound) else exc.status
        message = "not found" if status == 404 else public_message(str(exc))
        if status >= 500:
            message = "internal error"
        return render(request, "error.html", _who_or_none(request), status=status, status_code=status, error=message)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> HTMLResponse:
        return render(request, "error.html", _who_or_none(request), status=exc.status, status_code=exc.status,
                      error=public_message(exc.message))

    # -- sessions ----------------------------------------------------------------------------------
    def _who_or_none(request: Request) -> Who | None:
        b = parent.state.backend
        if b is None:
            return None
        s = verify(b.home, request.cookies.get(COOKIE))
        if s is None:
            return None
        p = principal_of(b.home, s.key_id)
        return Who(p, s.csrf) if p is not None else None

    def who(request: Request, *roles: Role) -> Who:
        """The signed-in user, charged to their key's rate limit; 403 for a role the page is not for."""
        w = _who_or_none(request)
        if w is None:
            raise _SignIn()
        if backend().limiter.take(w.principal.key_id):
            raise PageError(429, "too many requests; slow down")
        if roles and not w.can(*roles):
            raise PageError(403, f"a {w.role.value} key cannot open this page")
        return w

    async def posted(request: Request, *roles: Role) -> tuple[Who, Any]:
        """A form post: the signed-in user and the form, refused (403) without the session's CSRF token."""
        w = who(request, *roles)
        form = await request.form(max_files=64, max_fields=32)
        if not same(form.get("csrf") if isinstance(form.get("csrf"), str) else None, w.csrf):
            raise PageError(403, "the form's CSRF token is missing or wrong; reload the page and try again")
        return w, form

    def cookie(response: Response, name: str, value: str, *, max_age: int, path: str = "/console") -> None:
        response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="strict",
                            secure=get_settings().console_secure_cookie)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        w = _who_or_none(request)
        if w is None:
            return RedirectResponse("/console/login", status_code=303)
        return RedirectResponse(_landing(w), status_code=303)

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        import secrets

        pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(16)
        response = render(request, "login.html", None, token=login_csrf(home(), pre),
                          next=_local(request.query_params.get("next", "")), error=None)
        cookie(response, PRE_COOKIE, pre, max_age=3600, path="/console/login")
        return response

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=8)
        h, pre = home(), request.cookies.get(PRE_COOKIE)
        if not pre or not same(form.get("csrf"), login_csrf(h, pre)):
            raise PageError(403, "the form's CSRF token is missing or wrong; reload the page and try again")
        key = form.get("key") if isinstance(form.get("key"), str) else ""
        principal = await run_in_threadpool(authenticate, h, key)
        error = None
        if principal is None:
            error = "That key is not valid."
        elif backend().limiter.take(principal.key_id):
            error = "Too many attempts; wait a moment."
        elif principal.role is Role.PLATFORM:
            error = "Platform keys score listings through the API; they have no console."
        if error:
            return render(request, "login.html", None, status=401, token=login_csrf(h, pre),
                          next=_local(form.get("next") or ""), error=error)
        minutes = get_settings().console_session_minutes
        w = Who(principal, "")
        response = RedirectResponse(_local(form.get("next") or "") or _landing(w), status_code=303)
        cookie(response, COOKIE, issue(h, principal.key_id, minutes=minutes), max_age=minutes * 60)
        response.delete_cookie(PRE_COOKIE, path="/console/login")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        """Ends the session on the server too: a copy of its cookie is refused from now on."""
        await posted(request)
        s = verify(home(), request.cookies.get(COOKIE))
        if s is not None:
            await run_in_threadpool(revoke, home(), s)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict",
                               secure=get_settings().console_secure_cookie)
        return response

    # -- moderator queue and listing view -------------------------------------------------------------
    @app.get("/queue")
    async def queue_page(request: Request) -> HTMLResponse:
        w = who(request, Role.MODERATOR)
        f = _queue_filter(request)
        filters = ListingFilters(decision=None if f.decision == "any" else f.decision, brand=f.brand,
                                 min_risk=f.min_risk, max_risk=f.max_risk, seller=f.seller,
                                 reviewed={"no": False, "yes": True}.get(f.reviewed),
                                 since=_day(f.since), until=_day(f.until, after=True),
                                 unclaimed_for=w.principal.key_id)  # others' claimed listings stay out
        cursor = request.query_params.get("cursor") or None
        try:
            page = await run_in_threadpool(lambda: list_listings(home(), filters, order=f.order, cursor=cursor,
                                                                 limit=50, visible_to=w.scope))
        except NotFound:  # an unknown brand in the filter: an empty queue, not an error page
            page = ListingPage([], None)
        here = _local(str(request.url.path) + ("?" + request.url.query if request.url.query else ""))
        more = None
        if page.next:
            more = _with_params(here or "/console/queue", cursor=page.next)
        return render(request, "queue.html", w, items=page.listings, f=f, here=here, more=more)

    @app.get("/listings/{row_id}")
    async def listing_page(request: Request, row_id: int) -> HTMLResponse:
        w = who(request, Role.MODERATOR, Role.INVESTIGATOR, Role.BRAND)

        def work() -> tuple[dict[str, Any], str | None]:
            detail = listing_detail(home(), _id(row_id), visible_to=w.scope)
            held_by_other = None
            if w.can(Role.MODERATOR):  # opening a listing claims it, so two moderators do not review it
                try:
                    claim_listing(home(), detail["id"], key_id=w.principal.key_id)
                except Conflict as exc:
                    held_by_other = public_message(str(exc))
            return detail, held_by_other

        detail, held = await run_in_threadpool(work)
        back = _local(request.query_params.get("back", "")) or ("/console/queue" if w.can(Role.MODERATOR)
                                                               else "/console/")
        return render(request, "listing.html", w, item=detail, held=held, back=back)

    @app.post("/listings/{row_id}/review")
    async def review(request: Request, row_id: int) -> Response:
        w, form = await posted(request, Role.MODERATOR)
        from markguard.serving.reviews import record_review

        label = form.get("label")
        if label not in ("genuine", "counterfeit"):
            raise PageError(422, "label must be genuine or counterfeit")
        note = form.get("note") if isinstance(form.get("note"), str) else ""
        b = backend()

        def work() -> str:
            detail = listing_detail(b.home, _id(row_id), visible_to=w.scope)
            if not detail["listing_id"]:
                raise PageError(409, "this listing has no listing id; it cannot be reviewed")
            # what `POST /reviews` does (another moderator's claim refuses it, 409; ours ends), on the row
            # shown here, not the newest score of its listing id (a later photo the moderator never saw)
            record_review(b.home, b.engine.artifact, b.engine.model, row_id=detail["id"],
                          label=ReferenceKind(label), reviewer_key_id=w.principal.key_id, note=note[:2000])
            return detail["listing_id"]

        listing_id = await run_in_threadpool(work)
        target = _local(form.get("next") or "") or f"/console/listings/{row_id}"
        return flashed(target, f"{listing_id} reviewed {label}")

    @app.get("/listings/{row_id}/image")
    async def listing_image(request: Request, row_id: int) -> Response:
        w = who(request, Role.MODERATOR, Role.INVESTIGATOR, Role.BRAND)

        data, media = await run_in_threadpool(lambda: listing_photo(home(), _id(row_id), visible_to=w.scope))
        return Response(data, media_type=media, headers=_PRIVATE)

    @app.get("/listings/{row_id}/evidence.png")
    async def listing_evidence(request: Request, row_id: int) -> Response:
        w = who(request, Role.MODERATOR, Role.INVESTIGATOR, Role.BRAND)
        data = await run_in_threadpool(lambda: evidence_png(home(), _id(row_id), visible_to=w.scope))
        return Response(data, media_type="image/png", headers=_PRIVATE)

    @app.get("/references/{reference_id}/image")
    async def reference_image(request: Request, reference_id: int) -> Response:
        w = who(request, Role.MODERATOR, Role.INVESTIGATOR, Role.BRAND)

        data, media = await run_in_threadpool(lambda: reference_photo(home(), _id(reference_id), visible_to=w.scope))
        return Response(data, media_type=media, headers=_PRIVATE)

    # -- brand view ---------------------------------------------------------------------------------
    def brand_of(session: Any, w: Who, name: str) -> Any:
        from markguard.serving.brands import get_brand

        try:
            row = get_brand(session, name)
        except NotFound:
            raise PageError(404, "not found") from None
        if w.scope is not None and row.id != w.scope:
            raise PageError(404, "not found")  # another brand's page does not exist for this session
        return row

    @app.get("/brands")
    async def brands_page(request: Request) -> Response:
        w = who(request, Role.BRAND)
        if w.scope is not None:
            return RedirectResponse(f"/console/brands/{urllib.parse.quote(w.principal.brand_name or '')}",
                                    status_code=303)
        from markguard.serving.brands import list_brands

        def work() -> list[Any]:
            with home().sessions() as session:
                return list_brands(session)

        return render(request, "brands.html", w, brands=await run_in_threadpool(work))

    @app.get("/brands/{name}")
    async def brand_page(request: Request, name: str) -> HTMLResponse:
        w = who(request, Role.BRAND)

        def work() -> dict[str, Any]:
            with home().sessions() as session:
                row = brand_of(session, w, name)
                return {"name": row.name, "review_at": row.review_at, "takedown_at": row.takedown_at,
                        "genuine_from_reviews": bool(row.genuine_from_reviews),
                        "serial_pattern": row.serial_pattern, "gallery": queries.brand_gallery(session, row),
                        "listings": list_listings(home(), ListingFilters(brand=row.name), limit=100,
                                                  visible_to=w.scope).listings}

        return render(request, "brand.html", w, brand=await run_in_threadpool(work))

    def brand_url(name: str) -> str:
        return f"/console/brands/{urllib.parse.quote(name)}"

    @app.post("/brands/{name}/references")
    async def upload(request: Request, name: str) -> Response:
        w, form = await posted(request, Role.BRAND)
        # the API's own reading of uploads (images, zip archives through the safe reader, budgets)
        from markguard.serving.enroll import enroll
        from markguard.serving.routes.references import read_uploads

        with home().sessions() as session:
            canonical = brand_of(session, w, name).name
        kind = form.get("kind") or "genuine"
        if kind not in ("genuine", "counterfeit"):
            raise PageError(422, "kind must be genuine or counterfeit")
        product = form.get("product") if isinstance(form.get("product"), str) and form.get("product") else None
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile) and f.filename]
        if not files:
            raise PageError(422, "choose one or more photos or zip archives")
        inputs = await read_uploads(files)
        b = backend()
        report = await run_in_threadpool(enroll, b.home, b.engine.artifact, b.engine.model, brand=canonical,
                                         inputs=inputs, product=product, kind=ReferenceKind(kind))
        msg = f"added {len(report.added)} reference(s), {len(report.duplicates)} duplicate(s) skipped"
        return flashed(brand_url(canonical), msg)

    @app.post("/brands/{name}/references/{reference_id}/delete")
    async def delete(request: Request, name: str, reference_id: int) -> Response:
        w, _ = await posted(request, Role.BRAND)
        from markguard.serving.references import delete_references

        with home().sessions() as session:
            canonical = brand_of(session, w, name).name
        await run_in_threadpool(delete_references, home(), brand=canonical, ids=[_id(reference_id)])
        return flashed(brand_url(canonical), f"deleted reference {reference_id}")

    @app.post("/brands/{name}/policy")
    async def policy(request: Request, name: str) -> Response:
        w, form = await posted(request, Role.BRAND)
        values = {k: _risk(form.get(k), k) for k in ("review_at", "takedown_at")}
        if values["review_at"] is not None and values["takedown_at"] is not None \
                and values["review_at"] > values["takedown_at"]:
            raise PageError(422, "review_at must not exceed takedown_at")
        with home().sessions.begin() as session:
            row = brand_of(session, w, name)
            row.review_at, row.takedown_at = values["review_at"], values["takedown_at"]
            row.genuine_from_reviews = form.get("genuine_from_reviews") == "on"
            canonical = row.name
        return flashed(brand_url(canonical), "policy saved")

    @app.post("/brands/{name}/serials")
    async def serials(request: Request, name: str) -> Response:
        w, form = await posted(request, Role.BRAND)
        from markguard.serving.serials import import_serials

        with home().sessions() as session:
            canonical = brand_of(session, w, name).name
        upload = form.get("file")
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise PageError(422, "choose a file of serials (one a line, or a CSV with a serial column)")
        suffix = Path(upload.filename).suffix.lower()
        with tempfile.NamedTemporaryFile(suffix=suffix if suffix in (".txt", ".tsv") else ".csv") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
            fh.flush()
            report = await run_in_threadpool(import_serials, home(), canonical, fh.name, progress=False)
        fields = dataclasses.asdict(report)
        msg = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in fields.items() if isinstance(v, int | str))
        return flashed(brand_url(canonical), f"serials imported ({msg})")

    # -- rings and reports ---------------------------------------------------------------------------
    @app.get("/rings")
    async def rings_page(request: Request) -> HTMLResponse:
        w = who(request, Role.INVESTIGATOR, Role.BRAND)
        from markguard.serving.intelligence.rings import list_rings

        def work() -> list[dict[str, Any]]:
            with home().sessions() as session:
                return list_rings(session, visible_to=w.scope)

        return render(request, "rings.html", w, rings=await run_in_threadpool(work))

    def ring_of(w: Who, ring_id: int) -> dict[str, Any]:
        from markguard.serving.intelligence.rings import ring_detail

        with home().sessions() as session:
            return ring_detail(session, _id(ring_id), visible_to=w.scope)

    @app.get("/rings/{ring_id}")
    async def ring_page(request: Request, ring_id: int) -> HTMLResponse:
        w = who(request, Role.INVESTIGATOR, Role.BRAND)
        return render(request, "ring.html", w, ring=await run_in_threadpool(ring_of, w, ring_id))

    @app.get("/rings/{ring_id}/network.png")
    async def ring_network(request: Request, ring_id: int) -> Response:
        w = who(request, Role.INVESTIGATOR, Role.BRAND)
        from markguard.serving.intelligence.cases import _network_png

        detail = await run_in_threadpool(ring_of, w, ring_id)
        return Response(await run_in_threadpool(_network_png, detail), media_type="image/png")

    @app.post("/rings/{ring_id}/export")
    async def ring_export(request: Request, ring_id: int) -> Response:
        w, _ = await posted(request, Role.INVESTIGATOR, Role.BRAND)
        from markguard.serving.intelligence.cases import export_case

        def work() -> bytes:
            with tempfile.TemporaryDirectory(prefix="markguard-case-") as tmp:
                out = Path(tmp) / f"ring-{ring_id}"
                export_case(home(), _id(ring_id), out, actor=w.principal.key_id, role=w.role.value,
                            visible_to=w.scope)
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                    for path in sorted(out.rglob("*")):
                        if path.is_file():
                            zf.write(path, path.relative_to(out).as_posix())
                return buf.getvalue()

        return Response(await run_in_threadpool(work), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="ring-{int(ring_id)}.zip"'})

    @app.get("/reports")
    async def reports_page(request: Request) -> HTMLResponse:
        w = who(request, Role.BRAND)  # admins, and brand keys for their own brand (as GET /reports)
        from markguard.serving.intelligence.reports import build_report

        start, end = _period(request)

        def work() -> dict[str, Any]:
            with home().sessions() as session:
                return build_report(session, start=dt.datetime.combine(start, dt.time(), dt.UTC),
                                    end=dt.datetime.combine(end, dt.time(), dt.UTC), brand_id=w.scope)

        report = await run_in_threadpool(work)
        period = urllib.parse.urlencode({"from": start.isoformat(), "to": end.isoformat()})
        return render(request, "reports.html", w, report=report, start=start.isoformat(), end=end.isoformat(),
                      period=period, charts=CHARTS)

    @app.get("/reports/chart-{n}.png")
    async def report_chart(request: Request, n: int) -> Response:
        """The transparency report's charts (serving.intelligence.reports), as the CLI writes them."""
        w = who(request, Role.BRAND)
        from markguard.serving.intelligence.reports import _charts, build_report

        if not 0 <= n < len(CHARTS):
            raise PageError(404, "not found")
        start, end = _period(request)

        def work() -> bytes:
            import matplotlib.pyplot as plt

            with home().sessions() as session:
                figures = build_report(session, start=dt.datetime.combine(start, dt.time(), dt.UTC),
                                       end=dt.datetime.combine(end, dt.time(), dt.UTC), brand_id=w.scope)
            charts = _charts(figures)
            buf = io.BytesIO()
            charts[n].savefig(buf, format="png", metadata={"Software": None})
            for fig in charts:
                plt.close(fig)
            return buf.getvalue()

        return Response(await run_in_threadpool(work), media_type="image/png", headers=_PRIVATE)

    return app


# -- helpers ----------------------------------------------------------------------------------------
MAX_ID = 2**63 - 1


def _id(value: int) -> int:
    if not 1 <= value <= MAX_ID:
        raise PageError(404, "not found")
    return value


def _landing(w: Who) -> str:
    if w.role is Role.BRAND:
        return f"/console/brands/{urllib.parse.quote(w.principal.brand_name or '')}"
    if w.role is Role.INVESTIGATOR:
        return "/console/rings"
    return "/console/queue"


def _local(target: str) -> str:
    """A redirect target inside the console, or '' (never another site: no open redirect)."""
    if not isinstance(target, str) or not target.startswith("/console/") or target.startswith("//") \
            or "\\" in target or any(c in target for c in "\r\n"):
        return ""
    return target


def _risk(value: Any, name: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PageError(422, f"{name} must be a number between 0 and 1") from None
    if not 0.0 <= number <= 1.0:
        raise PageError(422, f"{name} must be a number between 0 and 1")
    return number


CHARTS = ("Decisions by week", "Listings flagged by brand", "Rings found, sellers per ring")


def _period(request: Request) -> tuple[dt.date, dt.date]:
    today = dt.datetime.now(dt.UTC).date()
    start = _date(request.query_params.get("from"), today - dt.timedelta(days=30))
    end = _date(request.query_params.get("to"), today + dt.timedelta(days=1))
    if end <= start:
        raise PageError(422, "`to` must come after `from`")
    return start, end


def _date(value: str | None, default: dt.date | None) -> dt.date | None:
    if not value:
        return default
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise PageError(422, "dates are YYYY-MM-DD") from None


DECISIONS = ("review", "takedown", "pass", "any")


@dataclasses.dataclass(frozen=True)
class QueueFilter:
    order: str = "newest"  # newest | riskiest
    decision: str = "review"  # review | takedown | pass | any
    reviewed: str = "no"  # no | yes | any
    brand: str | None = None
    seller: str | None = None
    min_risk: float | None = None
    max_risk: float | None = None
    since: dt.date | None = None  # scored on or after this day (UTC)
    until: dt.date | None = None  # scored on or before this day


def _day(day: dt.date | None, *, after: bool = False) -> dt.datetime | None:
    """The start of `day` (UTC), or with `after` the start of the next one (the last day has none: 422)."""
    if day is None:
        return None
    if after and day == dt.date.max:
        raise PageError(422, f"dates are at most {dt.date.max - dt.timedelta(days=1)}")
    return dt.datetime.combine(day + dt.timedelta(days=1) if after else day, dt.time(), dt.UTC)


def _queue_filter(request: Request) -> QueueFilter:
    q = request.query_params
    order = q.get("order") if q.get("order") in ("newest", "riskiest") else "newest"
    decision = q.get("decision") if q.get("decision") in DECISIONS else "review"
    reviewed = q.get("reviewed") if q.get("reviewed") in ("no", "yes", "any") else "no"
    return QueueFilter(order=order, decision=decision, reviewed=reviewed,
                               brand=(q.get("brand") or None) and q.get("brand")[:200],
                               seller=(q.get("seller") or None) and q.get("seller")[:200],
                               min_risk=_risk(q.get("min_risk"), "min_risk"),
                               max_risk=_risk(q.get("max_risk"), "max_risk"),
                               since=_date(q.get("since"), None), until=_date(q.get("until"), None))


def _with_params(target: str, **params: str) -> str:
    parts = urllib.parse.urlsplit(target)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query) if k not in params and k not in ("msg", "notice")]
    return urllib.parse.urlunsplit(("", "", parts.path, urllib.parse.urlencode([*query, *params.items()]), ""))
