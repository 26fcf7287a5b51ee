"""A review labels the score a moderator saw: the console's review of an older score of a listing id labels
that row and its photo, not the newest score of the same listing id (finding: the newest row's photo
became a known fake). The API's `POST /v1/reviews` names a listing id and labels its newest score."""

from __future__ import annotations

import hashlib
import re
import shutil

import pytest
from starlette.testclient import TestClient


@pytest.fixture(scope="module")
def rhome(api_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-row") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    return root


@pytest.fixture(scope="module")
def client(rhome):
    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import GuardMiddleware, RateLimiter
    from markguard.serving.state.home import Home

    engine = ScoringEngine(Home(rhome), ocr=False)
    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000))
    return TestClient(GuardMiddleware(build_app(backend)), base_url="https://testserver", raise_server_exceptions=False)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _score(client: TestClient, key: str, data: bytes, listing_id: str) -> None:
    r = client.post("/v1/score", headers=_auth(key), files={"image": ("p.jpg", data, "image/jpeg")},
                    data={"brand": "Oatly", "listing_id": listing_id})
    assert r.status_code == 200, r.text


def _rows(client: TestClient, key: str, listing_id: str) -> list[int]:
    """The catalog rows scored under `listing_id`, oldest first."""
    r = client.get("/v1/listings", headers=_auth(key), params={"limit": 200})
    assert r.status_code == 200, r.text
    return sorted(x["id"] for x in r.json()["listings"] if x["listing_id"] == listing_id)


def _sign_in(client: TestClient, key: str) -> None:
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    r = client.post("/console/login", data={"key": key, "csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303, r.text[:500]


def _fakes(client: TestClient, api_home) -> set[str]:  # noqa: ANN001
    r = client.get("/v1/brands/Oatly/references", headers=_auth(api_home.keys["oatly"]), params={"limit": 500})
    assert r.status_code == 200, r.text
    return {x["sha256"] for x in r.json()["references"] if x["kind"] == "counterfeit"}


def test_console_review_labels_the_row_the_moderator_opened(client, api_home):
    keys = api_home.keys
    first, second = (p.read_bytes() for p in api_home.photos[:2])
    _score(client, keys["platform"], first, "L-row")  # the listing, then the same listing id with a new photo
    _score(client, keys["platform"], second, "L-row")
    old, new = _rows(client, keys["moderator"], "L-row")
    fakes_before = _fakes(client, api_home)
    _sign_in(client, keys["moderator"])
    page = client.get(f"/console/listings/{old}")
    assert page.status_code == 200, page.text[:500]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    r = client.post(f"/console/listings/{old}/review", data={"csrf": csrf, "label": "counterfeit"},
                    follow_redirects=False)
    assert r.status_code == 303, r.text[:500]

    reviewed = client.get(f"/v1/listings/{old}", headers=_auth(keys["moderator"])).json()
    untouched = client.get(f"/v1/listings/{new}", headers=_auth(keys["moderator"])).json()
    assert [x["label"] for x in reviewed["reviews"]] == ["counterfeit"]
    assert untouched["reviews"] == []
    added = _fakes(client, api_home) - fakes_before
    assert added == {hashlib.sha256(first).hexdigest()}  # the photo the moderator saw, not the later one


def test_api_review_by_listing_id_labels_its_newest_score(client, api_home):
    keys = api_home.keys
    first, second = (p.read_bytes() for p in api_home.photos[:2])
    _score(client, keys["platform"], second, "L-api")
    _score(client, keys["platform"], first, "L-api")
    old, new = _rows(client, keys["moderator"], "L-api")
    r = client.post("/v1/reviews", headers=_auth(keys["moderator"]), json={"listing_id": "L-api", "label": "genuine"})
    assert r.status_code == 201, r.text
    assert client.get(f"/v1/listings/{new}", headers=_auth(keys["moderator"])).json()["reviews"][0]["label"] == "genuine"
    assert client.get(f"/v1/listings/{old}", headers=_auth(keys["moderator"])).json()["reviews"] == []
