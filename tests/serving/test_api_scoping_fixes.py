"""What a brand key sees of a listing's stored result (matches, duplicates), in its detail and drawn in its
`evidence.png` (API and console); drawings charged to the process's pixel budget; query times at datetime's
ends (422, never 500); and JSON bodies that name an unknown field (422, never ignored).

In-process (the API app over a private copy of the API home: the shipped model, real references)."""

from __future__ import annotations

import re

import cv2
import pytest
from starlette.testclient import TestClient

PREFIX = "/v1"


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def shared_photo(attack_home, attack_client):
    """An Arla photo listed as Arla, then again as Oatly: the Oatly listing's stored result matches Arla's
    references and names the Arla listing among its duplicates. Its catalog row id."""
    keys = attack_home.keys
    photo = attack_home.photos[2].read_bytes()
    for brand, listing in (("Arla", "arla-first"), ("Oatly", "oatly-again")):
        r = attack_client.post(f"{PREFIX}/score", headers=_auth(keys["platform"]), files={"image": ("p.jpg", photo)},
                               data={"brand": brand, "listing_id": listing, "seller_id": f"seller-{listing}"})
        assert r.status_code == 200, r.text
    page = attack_client.get(f"{PREFIX}/listings", headers=_auth(keys["moderator"]),
                             params={"seller": "seller-oatly-again"}).json()
    return page["listings"][0]["id"]


@pytest.fixture
def labels(monkeypatch):
    """The labels drawn on evidence images while the test runs."""
    drawn: list[str] = []
    put_text = cv2.putText

    def spy(image, text, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        drawn.append(text)
        return put_text(image, text, *args, **kwargs)

    monkeypatch.setattr(cv2, "putText", spy)
    return drawn


def test_brand_key_detail_has_only_its_matches_and_no_duplicates(attack_client, attack_home, shared_photo):
    keys = attack_home.keys
    full = attack_client.get(f"{PREFIX}/listings/{shared_photo}", headers=_auth(keys["moderator"])).json()["result"]
    assert {m["brand"] for m in full["matches"]} == {"Oatly", "Arla"}  # the setup: another brand is in there
    assert full["duplicates_total"] >= 1 and any(d["listing_id"] == "arla-first" for d in full["duplicates"])
    r = attack_client.get(f"{PREFIX}/listings/{shared_photo}", headers=_auth(keys["oatly"]))
    assert r.status_code == 200
    mine = r.json()["result"]
    assert mine["matches"] and {m["brand"] for m in mine["matches"]} == {"Oatly"}
    assert "duplicates" not in mine and "duplicates_total" not in mine
    assert "Arla" not in r.text and "arla-first" not in r.text


def test_brand_key_evidence_draws_only_what_its_detail_shows(attack_client, attack_home, shared_photo, labels):
    from markguard.serving.listings import draw_evidence
    from markguard.vision.decode import decode_image

    keys = attack_home.keys
    detail = attack_client.get(f"{PREFIX}/listings/{shared_photo}", headers=_auth(keys["oatly"])).json()
    arla_refs = {f"#{m['reference_id']} " for m in attack_client.get(
        f"{PREFIX}/listings/{shared_photo}", headers=_auth(keys["moderator"])).json()["result"]["matches"]
        if m["brand"] == "Arla"}
    full = attack_client.get(f"{PREFIX}/listings/{shared_photo}/evidence.png", headers=_auth(keys["moderator"]))
    assert full.status_code == 200 and any("Arla" in x for x in labels)  # the setup: a moderator sees them drawn
    labels.clear()
    r = attack_client.get(f"{PREFIX}/listings/{shared_photo}/evidence.png", headers=_auth(keys["oatly"]))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert labels and not [x for x in labels if "Arla" in x or any(ref in x for ref in arla_refs)], labels
    labels.clear()
    expected = draw_evidence(decode_image(attack_home.photos[2].read_bytes()), detail["result"])
    assert r.content == expected and r.content != full.content


def test_brand_console_session_evidence_is_scoped_too(attack_client, attack_home, shared_photo, labels):
    with TestClient(attack_client.app, base_url="https://testserver") as browser:
        form = browser.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
        r = browser.post("/console/login", data={"key": attack_home.keys["oatly"], "csrf": csrf}, follow_redirects=False)
        assert r.status_code == 303, r.text[:300]
        r = browser.get(f"/console/listings/{shared_photo}/evidence.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert labels and not [x for x in labels if "Arla" in x], labels


# -- drawings charge the process's pixel budget -----------------------------------------------------------
def test_evidence_png_waits_for_the_process_pixel_budget(attack_client, attack_home, shared_photo):
    from markguard.serving.budget import PROCESS_PIXELS
    from markguard.vision.decode import image_size

    width, height = image_size(attack_home.photos[2].read_bytes())
    path, headers = f"{PREFIX}/listings/{shared_photo}/evidence.png", _auth(attack_home.keys["moderator"])
    before = PROCESS_PIXELS.held
    room = PROCESS_PIXELS.capacity - before - width * height + 1  # other requests hold all but one pixel too few
    assert PROCESS_PIXELS.take(room)
    try:
        r = attack_client.get(path, headers=headers)
        assert r.status_code == 503 and r.json()["code"] == "busy" and r.headers["retry-after"] == "1"
    finally:
        PROCESS_PIXELS.give(room)
    assert attack_client.get(path, headers=headers).status_code == 200
    assert PROCESS_PIXELS.held == before  # given back when the request ended


# -- query times at datetime's ends -----------------------------------------------------------------------
@pytest.mark.parametrize("query", [
    "/listings?since=0001-01-01T00:00:00%2B01:00", "/listings?until=9999-12-31T23:59:59-01:00",
    "/listings?until=9999-06-01", "/reports?from=0001-01-01T00:00:00%2B01:00&to=2030-01-01",
    "/reports?from=2026-01-01&to=9999-12-31T23:59:59-01:00", "/rings?since=0001-01-01T00:00:00%2B05:00",
])
def test_times_out_of_range_are_422(attack_client, attack_home, query):
    r = attack_client.get(PREFIX + query, headers=_auth(attack_home.keys["admin"]))
    assert r.status_code == 422, r.text
    assert "ISO date or time" in r.json()["detail"]


def test_times_are_taken_in_utc(attack_client, attack_home):
    admin = _auth(attack_home.keys["admin"])
    r = attack_client.get(f"{PREFIX}/reports?from=2026-09-01T00:00:00%2B02:00&to=2026-10-01", headers=admin)
    assert r.status_code == 200 and r.json()["from"] == "2026-08-31T22:00:00+00:00"
    assert attack_client.get(f"{PREFIX}/listings?since=0001-01-01&until=9998-12-31", headers=admin).status_code == 200


# -- JSON bodies are closed ---------------------------------------------------------------------------------
def test_an_unknown_body_field_is_422_naming_it_and_changes_nothing(attack_client, attack_home):
    keys = attack_home.keys
    before = attack_client.get(f"{PREFIX}/brands/Oatly", headers=_auth(keys["oatly"])).json()
    r = attack_client.patch(f"{PREFIX}/brands/Oatly", headers=_auth(keys["oatly"]), json={"review_At": 0.5})
    assert r.status_code == 422 and "review_At" in r.json()["detail"], r.text
    assert attack_client.get(f"{PREFIX}/brands/Oatly", headers=_auth(keys["oatly"])).json() == before
    r = attack_client.post(f"{PREFIX}/brands", headers=_auth(keys["admin"]), json={"name": "Zeta", "wordmark": ["Z"]})
    assert r.status_code == 422 and "wordmark" in r.json()["detail"], r.text
    assert attack_client.get(f"{PREFIX}/brands/Zeta", headers=_auth(keys["admin"])).status_code == 404
    r = attack_client.post(f"{PREFIX}/reviews", headers=_auth(keys["moderator"]),
                           json={"listing_id": "x", "label": "genuine", "notes": "hi"})
    assert r.status_code == 422 and "notes" in r.json()["detail"], r.text
    r = attack_client.post(f"{PREFIX}/keys", headers=_auth(keys["admin"]), json={"role": "moderator", "brnd": "Oatly"})
    assert r.status_code == 422 and "brnd" in r.json()["detail"], r.text
