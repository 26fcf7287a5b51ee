"""The queue's date filters, without a browser: the last day the calendar has (`until=9999-12-31`, whose
next day does not exist) answers the console's 422 page, not a plain-text 500."""

from __future__ import annotations

import re
import shutil

import pytest
from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def client(api_home, tmp_path_factory):
    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import GuardMiddleware, RateLimiter
    from markguard.serving.state.home import Home

    root = tmp_path_factory.mktemp("queue-dates") / "home"  # signing in writes a session: a private copy
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    engine = ScoringEngine(Home(root), ocr=False)
    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000))
    client = TestClient(GuardMiddleware(build_app(backend)), base_url="https://testserver",
                        raise_server_exceptions=False)
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/console/login", data={"key": api_home.keys["moderator"], "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text[:500]
    return client


@pytest.mark.parametrize("query", ["until=9999-12-31", "until=9999-12-31&since=9999-12-31"])
def test_the_last_day_answers_the_422_page(client, query):
    r = client.get(f"/console/queue?decision=any&{query}")
    assert r.status_code == 422, r.text[-300:]
    assert r.headers["content-type"].startswith("text/html")
    assert "dates are at most 9999-12-30" in r.text


@pytest.mark.parametrize("query", ["until=9999-12-30", "since=0001-01-01", "since=9999-12-31"])
def test_other_days_answer_the_queue(client, query):
    r = client.get(f"/console/queue?decision=any&{query}")
    assert r.status_code == 200, r.text[-300:]
