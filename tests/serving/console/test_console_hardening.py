"""The console's answers to hostile input, without a browser: a seller id matplotlib would read as math,
an error no handler expects, a notice put in the URL, a path parameter of the wrong type. Each answers
the console's own page (HTML, with its security headers), never a plain-text 500 or FastAPI's JSON."""

from __future__ import annotations

import datetime as dt
import io
import re
import types
import zipfile
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from markguard.serving.api import build_app
from markguard.serving.brands import add_brand
from markguard.serving.console.sessions import FLASH_COOKIE, flash_token
from markguard.serving.intelligence.cases import verify_case
from markguard.serving.intelligence.tables import Ring, RingMember, SellerEdge
from markguard.serving.keys import Role, create_key
from markguard.serving.limits import GuardMiddleware, RateLimiter
from markguard.serving.state.home import Home
from markguard.serving.state.schema import Listing

SELLER = r"$\evil$"  # mathtext: an unknown symbol, which matplotlib refuses to draw
HEADERS = {"X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}


@pytest.fixture()
def console(tmp_path, monkeypatch):
    """A home with one brand, a two-seller ring (one seller named like math) and keys; no model."""
    monkeypatch.setenv("MARKGUARD_CONSOLE_SECURE_COOKIE", "0")
    home = Home(tmp_path / "home")
    with home.sessions.begin() as session:
        brand_id = add_brand(session, "Oatly").id
    keys = {role: create_key(home, role=Role(role))[0] for role in ("investigator", "moderator")}
    keys["oatly"] = create_key(home, role=Role.BRAND, brand="Oatly")[0]
    now = dt.datetime.now(dt.UTC)
    with home.sessions.begin() as session:
        listings = [Listing(listing_id=f"r-{i}", seller_id=seller, brand_id=brand_id, image_sha256="3" * 64,
                            risk=0.9, decision="review", model_tag="m", result={})
                    for i, seller in enumerate((SELLER, "shop-b"))]
        session.add_all(listings)
        session.flush()
        a, b = sorted([SELLER, "shop-b"])
        session.add(Ring(id=1, score=0.9, sellers=2, listings=2, brand_ids=[brand_id], flagged_share=1.0,
                         first_seen=now, last_seen=now))
        session.add_all([RingMember(ring_id=1, seller_id=SELLER), RingMember(ring_id=1, seller_id="shop-b")])
        session.add(SellerEdge(seller_a=a, seller_b=b, kind="photo", weight=1.0, count=1, first_seen=now,
                               last_seen=now, examples=[[listings[0].id, listings[1].id, "same photo"]]))
    backend = types.SimpleNamespace(home=home, limiter=RateLimiter(rate=1000.0, burst=1000), engine=None)
    client = TestClient(GuardMiddleware(build_app(backend)), base_url="https://testserver",
                        raise_server_exceptions=False)
    yield types.SimpleNamespace(client=client, keys=keys, home=home)
    home.close()


def sign_in(client: TestClient, key: str) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/login").text).group(1)
    r = client.post("/console/login", data={"key": key, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text[:300]


def csrf_of(client: TestClient, path: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', client.get(path).text).group(1)


def assert_console_page(r, status: int) -> None:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    for name, value in HEADERS.items():
        assert r.headers[name] == value


def test_a_seller_id_like_math_draws_the_network_and_exports_the_case(console, tmp_path):
    sign_in(console.client, console.keys["investigator"])
    r = console.client.get("/console/rings/1/network.png")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.text[:300]
    r = console.client.post("/console/rings/1/export", data={"csrf": csrf_of(console.client, "/console/rings/1")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip", r.text[:300]
    out = tmp_path / "bundle"
    zipfile.ZipFile(io.BytesIO(r.content)).extractall(out)
    assert verify_case(out) == []
    report = (out / "report.html").read_text(encoding="utf-8")
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]+)">', report)
    assert policy is not None and "default-src 'none'" in policy.group(1)
    assert "script-src" not in policy.group(1) and "<script" not in report


def test_an_unexpected_error_answers_the_html_500_page_with_the_headers(console, monkeypatch):
    import markguard.serving.intelligence.rings as rings

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail of the failure")

    monkeypatch.setattr(rings, "list_rings", broken)
    sign_in(console.client, console.keys["investigator"])
    r = console.client.get("/console/rings")
    assert_console_page(r, 500)
    assert 'id="error"' in r.text and "internal error" in r.text
    assert "secret detail" not in r.text


def test_the_url_cannot_put_a_notice_on_a_page(console):
    r = console.client.get("/console/login?msg=Your+session+expired.+Paste+your+key+at+https://evil.example")
    assert r.status_code == 200
    assert "evil.example" not in r.text and 'class="flash"' not in r.text
    forged, notice = flash_token(Home(console.home.root.parent / "other"), "paste your key at evil.example")
    console.client.cookies.set(FLASH_COOKIE, forged, domain="testserver", path="/console")
    assert "evil.example" not in console.client.get(f"/console/login?notice={notice}").text  # another home's key


def test_a_notice_from_the_server_shows_at_its_redirect_only(console):
    client = console.client
    sign_in(client, console.keys["oatly"])
    r = client.post("/console/brands/Oatly/policy", data={"csrf": csrf_of(client, "/console/brands/Oatly"),
                                                          "review_at": "0.4", "takedown_at": "0.8"},
                    follow_redirects=False)
    target = r.headers["location"]
    assert r.status_code == 303 and "msg" not in target and "policy" not in target
    page = client.get(target)
    assert re.search(r'<p class="flash"[^>]*>policy saved</p>', page.text), page.text[:500]
    assert 'class="flash"' not in client.get("/console/brands/Oatly").text  # not on other addresses
    assert 'class="flash"' not in client.get("/console/brands/Oatly?notice=guessed").text


def test_a_path_parameter_of_the_wrong_type_answers_the_console_page(console):
    sign_in(console.client, console.keys["moderator"])
    r = console.client.get("/console/listings/abc")
    assert_console_page(r, 404)
    assert 'id="error"' in r.text and "not found" in r.text


def test_console_without_a_slash_goes_to_the_console():
    client = TestClient(build_app(None), base_url="https://testserver")
    r = client.get("/console", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/"


def test_the_transparency_report_html_has_a_content_security_policy(console, tmp_path: Path):
    from markguard.serving.intelligence.reports import build_report, write_report

    with console.home.sessions() as session:
        figures = build_report(session, start=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
                               end=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    figures["decisions_by_brand"][SELLER] = {"review": 1}  # a name matplotlib would read as math
    figures["brand"] = SELLER
    write_report(figures, tmp_path / "report")
    text = (tmp_path / "report" / "report.html").read_text(encoding="utf-8")
    policy = re.search(r"<meta http-equiv='Content-Security-Policy' content=\"([^\"]+)\">", text)
    assert policy is not None and policy.group(1).startswith("default-src 'none'")
    assert "style-src" not in policy.group(1)  # the report has no style at all
