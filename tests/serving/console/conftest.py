"""The console's browser tests: a real `markguard serve` on loopback, Debian's chromium driven by
Playwright (`executable_path`, never `playwright install`), and axe-core for accessibility.

Chromium resolves no host but loopback (`--host-resolver-rules`), so a page that reached for a CDN would
fail to load it; every test also records each request its pages make and fails on any off-origin one.
Without chromium the tests skip locally and fail under CI=true (`.ci/run` installs it).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = Path(os.environ.get("MARKGUARD_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost"]
BAD_IMPACT = ("serious", "critical")


def _require_browser() -> None:
    reason = None
    try:
        import axe_playwright_python  # noqa: F401
        import playwright  # noqa: F401
    except ImportError:
        reason = "playwright / axe-playwright-python not installed (pip install -e '.[console]')"
    if reason is None and not CHROMIUM.exists():
        reason = f"no chromium at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@dataclasses.dataclass
class Console:
    url: str  # the server's base URL
    root: Path  # its home
    keys: dict[str, str]  # admin, platform, moderator, moderator2, investigator, oatly, arla
    rows: dict[str, int]  # listing id → catalog row id
    references: dict[str, list[int]]
    photos: dict[str, Path]  # listing id → the photo scored
    shots: Path  # where the README's screenshots go


def _score(url: str, key: str, photo: Path, **fields: str) -> dict[str, Any]:
    with photo.open("rb") as fh:
        r = httpx.post(url + "/score", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                       files={"image": (photo.name, fh, "image/jpeg")}, data=fields)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def chromium() -> Path:
    _require_browser()
    return CHROMIUM


@pytest.fixture(scope="module")
def console(chromium, api_home, grocery: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """A copy of the API home behind a real server: 20 flagged Oatly listings for the queue, Arla listings
    (one photo posted by two sellers: a ring), and an investigator key."""
    from sqlalchemy import select

    from markguard.serving.intelligence.rings import update_rings
    from markguard.serving.keys import Role, create_key
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Listing

    from ..real_server import real_server

    base = tmp_path_factory.mktemp("console")
    root = base / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    keys = dict(api_home.keys)
    home = Home(root)
    keys["investigator"] = create_key(home, role=Role.INVESTIGATOR)[0]
    keys["moderator2"] = create_key(home, role=Role.MODERATOR, label="a second moderator")[0]
    home.close()
    train = sorted((grocery / "train").rglob("*.jpg"))
    others = [p for p in train if not p.name.startswith(("Oatly-", "Arla-"))]
    queue_photos = others[:: max(1, len(others) // 20)][:20]
    env = {"MARKGUARD_OCR": "0", "MARKGUARD_CONSOLE_SECURE_COOKIE": "0", "MARKGUARD_RATE": "1000",
           "MARKGUARD_BURST": "1000"}
    shots = Path(os.environ.get("MARKGUARD_CONSOLE_SHOTS") or base / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with real_server(root, base / "serve.log", env=env) as (url, _proc):
        admin = {"Authorization": f"Bearer {keys['admin']}"}
        for brand in ("Oatly", "Arla"):  # every listing of these brands waits for a moderator
            r = httpx.patch(f"{url}/brands/{brand}", headers=admin, json={"review_at": 0.0, "takedown_at": 1.0}, timeout=30)
            assert r.status_code == 200, r.text
        photos = {}
        for i, photo in enumerate(queue_photos, 1):
            photos[f"q-{i:02d}"] = photo
            _score(url, keys["platform"], photo, brand="Oatly", listing_id=f"q-{i:02d}", seller_id=f"shop-{i % 4}",
                   title=f"Oat drink {i}")
        arla = api_home.photos[2]
        for lid, seller in (("a-1", "ring-a"), ("a-2", "ring-b")):
            photos[lid] = arla
            _score(url, keys["platform"], arla, brand="Arla", listing_id=lid, seller_id=seller, title="Arla organic whole milk, fresh from the farm")
        home = Home(root)
        update_rings(home)
        _add_read_listing(home)
        with home.sessions() as session:
            rows = {lid: rid for rid, lid in session.execute(select(Listing.id, Listing.listing_id))}
        home.close()
        yield Console(url, root, keys, rows, api_home.references, photos, shots)


def _add_read_listing(home: Any) -> None:
    """`o-1`: q-01's photo and stored result, with text and a serial read as OCR would have them (the
    server above runs without OCR, which costs seconds a photo on two cores), recorded as a pass."""
    from sqlalchemy import select

    from markguard.serving.listings import stored_result
    from markguard.serving.state.schema import Listing

    with home.sessions.begin() as session:
        q = session.scalar(select(Listing).where(Listing.listing_id == "q-01"))
        result = dict(q.result)
        result["ocr"] = {"lines": [{"text": "OATLY", "confidence": 0.97, "box": [12, 14, 160, 52]},
                                   {"text": "SN 7350047180017", "confidence": 0.88, "box": [12, 70, 220, 96]}],
                         "wordmarks": [],
                         "serials": [{"text": "7350047180017", "normalized": "7350047180017", "format_ok": True,
                                      "checksum_ok": False, "registered": False, "seen_in_listings": 2}]}
        result = stored_result({**result, "decision": "pass"})
        session.add(Listing(listing_id="o-1", seller_id="shop-ocr", brand_id=q.brand_id, image_sha256=q.image_sha256,
                            phash=q.phash, risk=q.risk, decision="pass", model_tag=q.model_tag, result=result))


@pytest.fixture(scope="module")
def browser(chromium: Path, console: Console) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), headless=True, args=ARGS)
        yield b
        b.close()


class Pages:
    """Browser contexts for one test: each signed in as a role, every request recorded."""

    def __init__(self, browser: Any, console: Console, out: Path) -> None:
        self.browser, self.console, self.out = browser, console, out
        self.contexts: list[Any] = []
        self.requests: list[str] = []
        self.csp_errors: list[str] = []

    def new(self) -> Any:
        context = self.browser.new_context(viewport={"width": 1280, "height": 900})
        context.on("request", lambda r: self.requests.append(r.url))
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: self.csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
        return page

    def signed_in(self, role: str) -> Any:
        page = self.new()
        page.goto(self.console.url + "/console/login")
        page.fill("#key", self.console.keys[role])
        with page.expect_navigation():
            page.click("#sign-in")
        assert "/console/login" not in page.url, page.content()[:2000]
        return page

    def check(self, page: Any) -> None:
        """The page passes axe-core without serious or critical violations and loaded nothing off-origin."""
        from axe_playwright_python.sync_playwright import Axe

        result = Axe().run(page)
        bad = [v for v in result.response["violations"] if v.get("impact") in BAD_IMPACT]
        assert not bad, f"{page.url}: " + "; ".join(
            f"{v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in bad)
        self.assert_local()

    def assert_local(self) -> None:
        origin = self.console.url + "/"
        foreign = [u for u in self.requests if not (u.startswith(origin) or u.startswith(("data:", "about:")))]
        assert not foreign, f"third-party requests: {foreign[:5]}"
        assert not self.csp_errors, self.csp_errors[:3]

    def close(self, failed: bool) -> None:
        for i, context in enumerate(self.contexts):
            if failed:
                for j, page in enumerate(context.pages):
                    try:
                        page.screenshot(path=str(self.out / f"failure-{i}-{j}.png"), full_page=True)
                    except Exception:  # noqa: BLE001 - a closed page has nothing to show
                        pass
            context.close()


@pytest.fixture()
def pages(browser: Any, console: Console, request: pytest.FixtureRequest) -> Iterator[Pages]:
    out = Path(os.environ.get("MARKGUARD_CONSOLE_FAILURES", "test-artifacts/console"))
    out = out / re.sub(r"[^\w.-]+", "_", request.node.name)
    out.mkdir(parents=True, exist_ok=True)
    p = Pages(browser, console, out)
    yield p
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    p.close(failed)
    if failed:
        print(f"screenshots of the failed test in {out}")
    else:
        shutil.rmtree(out, ignore_errors=True)
