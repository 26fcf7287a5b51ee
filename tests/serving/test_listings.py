"""The listings API (serving.listings, serving.routes.listings): the review queue's filters and keyset
pages, a listing's stored result and earlier listings, its photo and drawn evidence, reference photos,
brand scoping by typed URL, and claims (exactly one of concurrent claims wins, on each catalog backend).

Real catalog, model, OCR and scoring: grocery photos scored through `POST /score`. The queue's
filters and pages are also checked on many catalog rows written directly (risk ties, both backends)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import shutil
import threading

import cv2
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select
from starlette.testclient import TestClient

from markguard.vision.errors import Conflict


# -- a private copy of the API home, with four listings scored with OCR ------------------------------
@pytest.fixture(scope="module")
def lhome(api_home, tmp_path_factory):
    from markguard.serving.keys import Role, create_key
    from markguard.serving.state.home import Home

    root = tmp_path_factory.mktemp("listings") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    home = Home(root, database_url=f"sqlite:///{root / 'catalog.sqlite'}")
    keys = dict(api_home.keys)
    keys["moderator2"] = create_key(home, role=Role.MODERATOR)[0]
    keys["investigator"] = create_key(home, role=Role.INVESTIGATOR)[0]
    yield home, keys
    home.close()


@pytest.fixture(scope="module")
def client(lhome):
    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.limits import GuardMiddleware, RateLimiter

    home, _ = lhome
    engine = ScoringEngine(home, ocr=True, ocr_budget_ms=60_000)
    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=1000.0, burst=1000))
    return TestClient(GuardMiddleware(build_app(backend)), raise_server_exceptions=False)


def call(client, method, path, key=None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.request(method, path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def scored(client, lhome, api_home):
    """Catalog row ids of four listings: L-1 (Oatly photo 0), L-2 (Oatly photo 1), L-3 (Arla), L-4 (photo 0 again)."""
    _, keys = lhome
    plan = [(0, "Oatly", "L-1", "seller-a"), (1, "Oatly", "L-2", "seller-b"), (2, "Arla", "L-3", "seller-a"),
            (0, "Oatly", "L-4", "seller-c")]
    rows = {}
    for i, brand, listing, seller in plan:
        r = call(client, "POST", "/v1/score", keys["platform"], data={"brand": brand, "listing_id": listing,
                 "seller_id": seller, "title": f"{brand} milk"},
                 files={"image": ("p.jpg", api_home.photos[i].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        page = call(client, "GET", "/v1/listings", keys["moderator"], params={"seller": seller, "limit": 1}).json()
        assert page["listings"][0]["listing_id"] == listing
        rows[listing] = page["listings"][0]["id"]
    return rows


def all_rows(home):
    from markguard.serving.state.schema import Listing

    with home.sessions() as session:
        return list(session.scalars(select(Listing)))


def pages(client, key, **params):
    """Every page of a query, following `next`; the ids in order."""
    ids, cursor, n = [], None, 0
    while True:
        r = call(client, "GET", "/v1/listings", key, params={**params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["listings"]) <= params.get("limit", 50)
        ids += [x["id"] for x in body["listings"]]
        cursor, n = body["next"], n + 1
        if cursor is None:
            return ids, n


# -- the queue over HTTP -------------------------------------------------------------------------------
def test_queue_pages_filters_and_orders(client, lhome, scored):
    home, keys = lhome
    rows = all_rows(home)
    mod = keys["moderator"]
    ids, n = pages(client, mod, limit=1)
    assert ids == sorted((r.id for r in rows), reverse=True) and n == len(rows)  # each row once, newest first
    ids, _ = pages(client, mod, limit=2, order="riskiest")
    assert ids == [r.id for r in sorted(rows, key=lambda r: (r.risk, r.id), reverse=True)]
    brands = {r.listing_id: r.brand_id for r in rows}
    oatly = [r.id for r in rows if r.brand_id == brands["L-1"]]
    assert sorted(pages(client, mod, brand="oatly", limit=3)[0]) == sorted(oatly)  # brand names casefold
    assert pages(client, mod, seller="seller-a")[0] == [scored["L-3"], scored["L-1"]]
    decision = next(r.decision for r in rows if r.id == scored["L-2"])
    assert sorted(pages(client, mod, decision=decision)[0]) == sorted(r.id for r in rows if r.decision == decision)
    risks = sorted(r.risk for r in rows)
    lo, hi = risks[0], risks[len(risks) // 2]
    assert sorted(pages(client, mod, min_risk=lo, max_risk=hi)[0]) == sorted(r.id for r in rows if lo <= r.risk <= hi)
    cut = next(r.scored_at for r in rows if r.id == scored["L-3"])
    assert sorted(pages(client, mod, since=cut.isoformat())[0]) == sorted(r.id for r in rows if r.scored_at >= cut)
    assert sorted(pages(client, mod, until=cut.isoformat())[0]) == sorted(r.id for r in rows if r.scored_at < cut)
    item = call(client, "GET", "/v1/listings", mod, params={"seller": "seller-b"}).json()["listings"][0]
    assert item["brand"] == "Oatly" and item["title"] == "Oatly milk" and item["reviewed"] is False
    # bounded pages, opaque but checked cursors
    assert call(client, "GET", "/v1/listings", mod, params={"limit": 201}).status_code == 422
    assert call(client, "GET", "/v1/listings", mod, params={"cursor": "not-a-cursor"}).status_code == 422
    newest = call(client, "GET", "/v1/listings", mod, params={"limit": 1}).json()["next"]
    r = call(client, "GET", "/v1/listings", mod, params={"cursor": newest, "order": "riskiest"})
    assert r.status_code == 422 and "cursor" in r.json()["detail"]
    assert call(client, "GET", "/v1/listings", mod, params={"brand": "Nope"}).status_code == 404


def test_reviewed_filter_and_detail(client, lhome, scored):
    home, keys = lhome
    mod = keys["moderator"]
    assert scored["L-2"] in pages(client, mod, reviewed="false")[0]
    r = call(client, "POST", "/v1/reviews", mod, json={"listing_id": "L-2", "label": "genuine", "note": "looks right"})
    assert r.status_code == 201, r.text
    assert scored["L-2"] in pages(client, mod, reviewed="true")[0]
    assert scored["L-2"] not in pages(client, mod, reviewed="false")[0]
    detail = call(client, "GET", f"/v1/listings/{scored['L-2']}", mod).json()
    assert detail["reviewed"] and detail["review_label"] == "genuine"
    assert [(x["label"], x["note"], x["listing_id"]) for x in detail["reviews"]] == [("genuine", "looks right", "L-2")]
    # the stored result is the full score JSON, with what drawing it needs
    result = detail["result"]
    assert {"risk", "decision", "brand", "matches", "ocr", "signals", "duplicates"} <= set(result)
    assert result["risk"] == detail["risk"] and result["title"] == "Oatly milk" and "image" not in result
    assert result["matches"] and all(len(m["box"]) == 4 for m in result["matches"])
    # the same photo listed again names the earlier listing
    again = call(client, "GET", f"/v1/listings/{scored['L-4']}", mod).json()
    assert scored["L-1"] in [x["id"] for x in again["earlier"]["same_photo"]]
    first = call(client, "GET", f"/v1/listings/{scored['L-1']}", mod).json()
    assert scored["L-4"] not in [x["id"] for x in first["earlier"]["same_photo"]]  # earlier ones only
    assert call(client, "GET", "/v1/listings/999999", mod).status_code == 404


# -- photos and evidence -------------------------------------------------------------------------------
def test_listing_and_reference_photos(client, lhome, scored, api_home):
    _, keys = lhome
    r = call(client, "GET", f"/v1/listings/{scored['L-3']}/image", keys["moderator"])
    assert r.status_code == 200 and r.content == api_home.photos[2].read_bytes()
    assert r.headers["content-type"] == "image/jpeg" and r.headers["cache-control"] == "private, no-store"
    ref = api_home.references["Arla"][0]
    r = call(client, "GET", f"/v1/references/{ref}/image", keys["arla"])
    assert r.status_code == 200 and r.headers["cache-control"] == "private, no-store"
    Image.open(io.BytesIO(r.content)).verify()
    assert r.headers["content-type"] == Image.MIME[Image.open(io.BytesIO(r.content)).format]


def _resized(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    from markguard.vision.decode import decode_image

    image = decode_image(data)
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if shape[0] < image.shape[0]
                      else cv2.INTER_LINEAR).astype(np.int16)


def _edge_change(drawn: np.ndarray, original: np.ndarray, box, scale: float) -> float:
    """Mean absolute change along the middle half of a box's left and right edges."""
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    x1, y1 = min(x1 - 1, drawn.shape[1] - 1), min(y1 - 1, drawn.shape[0] - 1)
    ys = slice(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4 + 1)
    diffs = [np.abs(drawn[ys, x] - original[ys, x]).mean() for x in (max(0, x0), x1)]
    return float(max(diffs))


def test_evidence_png_draws_matches_and_ocr_boxes(client, lhome, scored, api_home):
    from markguard.vision.decode import decode_image

    _, keys = lhome
    for listing, photo in (("L-1", 0), ("L-2", 1), ("L-3", 2)):
        r = call(client, "GET", f"/v1/listings/{scored[listing]}/evidence.png", keys["moderator"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.headers["cache-control"] == "private, no-store"
        drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")).astype(np.int16)
        result = call(client, "GET", f"/v1/listings/{scored[listing]}", keys["moderator"]).json()["result"]
        height, width = decode_image(api_home.photos[photo].read_bytes()).shape[:2]
        scale = drawn.shape[1] / width
        assert abs(drawn.shape[0] - round(height * scale)) <= 1 and max(drawn.shape) >= 800
        original = _resized(api_home.photos[photo].read_bytes(), drawn.shape)
        unchanged = (np.abs(drawn - original).max(axis=2) < 12).mean()
        assert unchanged > 0.6, unchanged  # it is the photo, with boxes on it
        boxes = [m["box"] for m in result["matches"] if m["box"]]
        boxes += [line["box"] for line in result["ocr"]["lines"]]
        assert boxes
        for box in boxes:
            assert _edge_change(drawn, original, box, scale) > 40, (listing, box)
    lines = sum(len(call(client, "GET", f"/v1/listings/{scored[x]}", keys["moderator"]).json()["result"]["ocr"]["lines"])
                for x in ("L-1", "L-2", "L-3"))
    assert lines > 0  # OCR boxes were among those checked


def test_serial_boxes_are_stored_and_drawn(api_home):
    """A serial read keeps the box of the OCR line it came from (also after an allowlist re-read changed
    some characters), and is drawn in the serial colours."""
    from markguard.serving.listings import _SERIAL_BAD, _SERIAL_OK, draw_evidence, stored_result
    from markguard.vision.decode import decode_image

    image = decode_image(api_home.photos[0].read_bytes())
    lines = [{"text": "OATLY", "confidence": 0.9, "box": [20, 20, 200, 60]},
             {"text": "Lot: AB-12345", "confidence": 0.8, "box": [30, 250, 220, 290]},
             {"text": "best before 2O27", "confidence": 0.7, "box": [30, 150, 300, 190]}]
    serials = [{"text": "AB-12345", "normalized": "AB12345", "format_ok": True, "checksum_ok": None,
                "registered": True, "seen_in_listings": 0, "seen_by_sellers": 0},
               {"text": "2027", "normalized": "2027", "format_ok": False, "checksum_ok": None,  # re-read: O → 0
                "registered": None, "seen_in_listings": 0, "seen_by_sellers": 0}]
    stored = stored_result({"risk": 0.5, "image": "/home/me/secret.jpg", "claimed": {"title": "t"},
                            "matches": [], "ocr": {"lines": lines, "wordmarks": [], "serials": serials}})
    assert "image" not in stored and stored["title"] == "t"
    assert [(s["line"], s["box"]) for s in stored["ocr"]["serials"]] == [(1, lines[1]["box"]), (2, lines[2]["box"])]
    stored["ocr"]["lines"] = []  # serial boxes only
    drawn = np.asarray(Image.open(io.BytesIO(draw_evidence(image, stored))).convert("RGB")).astype(np.int16)
    scale = drawn.shape[1] / image.shape[1]
    for serial, color in zip(stored["ocr"]["serials"], (_SERIAL_OK, _SERIAL_BAD), strict=True):
        x0, y0, _, y1 = (round(v * scale) for v in serial["box"])
        assert np.abs(drawn[(y0 + y1) // 2, x0] - np.array(color)).max() < 30


# -- scoping by role -----------------------------------------------------------------------------------
def test_brand_keys_see_only_their_brand(client, lhome, scored, api_home):
    home, keys = lhome
    arla_row, oatly_row = scored["L-3"], scored["L-1"]
    arla_ref, oatly_ref = api_home.references["Arla"][0], api_home.references["Oatly"][0]
    for path in (f"/v1/listings/{arla_row}", f"/v1/listings/{arla_row}/image", f"/v1/listings/{arla_row}/evidence.png",
                 f"/v1/references/{arla_ref}/image"):
        assert call(client, "GET", path, keys["oatly"]).status_code == 404, path  # as if it did not exist
        assert call(client, "GET", path, keys["arla"]).status_code == 200, path
    for path in (f"/v1/listings/{oatly_row}/image", f"/v1/references/{oatly_ref}/image"):
        assert call(client, "GET", path, keys["arla"]).status_code == 404, path
        assert call(client, "GET", path, keys["oatly"]).status_code == 200, path
    oatly_ids = {r.id for r in all_rows(home) if r.brand_id is not None and r.id in (scored["L-1"], scored["L-2"])}
    seen = set(pages(client, keys["oatly"], limit=2)[0])
    assert oatly_ids <= seen and arla_row not in seen
    assert all(x["brand"] == "Oatly" for x in call(client, "GET", "/v1/listings", keys["oatly"]).json()["listings"])
    assert call(client, "GET", "/v1/listings", keys["oatly"], params={"brand": "Arla"}).status_code == 404
    # the stored result may name other brands' references (matches) and listings (duplicates): a brand's view drops them
    full = call(client, "GET", f"/v1/listings/{oatly_row}", keys["moderator"]).json()["result"]
    mine = call(client, "GET", f"/v1/listings/{oatly_row}", keys["oatly"]).json()["result"]
    assert {m["brand"] for m in mine["matches"]} <= {"Oatly"} and "duplicates" not in mine
    assert [m for m in full["matches"] if m["brand"] == "Oatly"] == mine["matches"]
    # everyone else who may read: all brands; the platform key may not browse; brands may not claim
    for role in ("moderator", "investigator", "admin"):
        assert arla_row in pages(client, keys[role])[0] and oatly_row in pages(client, keys[role])[0]
    for path in ("/v1/listings", f"/v1/listings/{oatly_row}", f"/v1/listings/{oatly_row}/image", f"/v1/references/{oatly_ref}/image"):
        assert call(client, "GET", path, keys["platform"]).status_code == 403
        assert call(client, "GET", path).status_code == 401
    assert call(client, "POST", f"/v1/listings/{oatly_row}/claim", keys["oatly"]).status_code == 403
    assert call(client, "POST", f"/v1/listings/{oatly_row}/claim", keys["investigator"]).status_code == 403


# -- claims over HTTP ----------------------------------------------------------------------------------
def test_claims_hold_and_hide_listings(client, lhome, scored):
    _, keys = lhome
    one, two, row = keys["moderator"], keys["moderator2"], scored["L-2"]
    r = call(client, "POST", f"/v1/listings/{row}/claim", one)
    assert r.status_code == 200 and r.json()["listing"] == row
    assert call(client, "POST", f"/v1/listings/{row}/claim", two).status_code == 409
    assert call(client, "POST", f"/v1/listings/{row}/claim", one).status_code == 200  # renews
    assert row not in pages(client, two, unclaimed="true")[0]  # the queue skips it for the others
    assert row in pages(client, one, unclaimed="true")[0]  # not for the holder
    assert row in pages(client, two)[0]  # and it is still listed without the filter, with its claim
    assert call(client, "GET", f"/v1/listings/{row}", two).json()["claim"]["expires_at"]
    assert call(client, "DELETE", f"/v1/listings/{row}/claim", two).status_code == 409
    assert call(client, "DELETE", f"/v1/listings/{row}/claim", one).status_code == 204
    assert call(client, "DELETE", f"/v1/listings/{row}/claim", one).status_code == 404
    assert call(client, "POST", f"/v1/listings/{row}/claim", two).status_code == 200
    assert call(client, "DELETE", f"/v1/listings/{row}/claim", keys["admin"]).status_code == 204  # admin override
    assert call(client, "POST", "/v1/listings/999999/claim", one).status_code == 404


def test_a_claimed_listing_is_reviewed_by_its_holder_only(client, lhome, scored):
    _, keys = lhome
    one, two, row = keys["moderator"], keys["moderator2"], scored["L-3"]
    assert call(client, "POST", f"/v1/listings/{row}/claim", two).status_code == 200
    r = call(client, "POST", "/v1/reviews", one, json={"listing_id": "L-3", "label": "genuine"})
    assert r.status_code == 409 and "claimed" in r.json()["detail"]
    assert call(client, "GET", f"/v1/listings/{row}", one).json()["reviews"] == []
    r = call(client, "POST", "/v1/reviews", two, json={"listing_id": "L-3", "label": "genuine", "note": "mine"})
    assert r.status_code == 201, r.text
    detail = call(client, "GET", f"/v1/listings/{row}", one).json()
    assert detail["claim"] is None and [x["note"] for x in detail["reviews"]] == ["mine"]  # the review ended it


def test_listing_routes_are_documented(client):
    paths = client.get("/docs.json").json()["paths"]
    for path, method in (("/v1/listings", "get"), ("/v1/listings/{listing}", "get"), ("/v1/listings/{listing}/image", "get"),
                         ("/v1/listings/{listing}/evidence.png", "get"), ("/v1/references/{reference}/image", "get"),
                         ("/v1/listings/{listing}/claim", "post"), ("/v1/listings/{listing}/claim", "delete")):
        assert paths[path][method]["summary"], path
    assert "image/png" in paths["/v1/listings/{listing}/evidence.png"]["get"]["responses"]["200"]["content"]
    params = {p["name"] for p in paths["/v1/listings"]["get"]["parameters"]}
    assert {"decision", "brand", "min_risk", "max_risk", "reviewed", "seller", "since", "until", "unclaimed",
            "order", "cursor", "limit"} <= params


# -- many rows on each catalog backend -----------------------------------------------------------------
@pytest.fixture()
def many(home_dir):
    """A catalog with 57 listings written directly: 2 brands, risks with ties, 3 sellers, reviews."""
    from markguard.serving.reviews import Review
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Brand, Listing

    home = Home(home_dir)
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with home.sessions.begin() as session:
        brands = [Brand(name="Oatly", key="oatly"), Brand(name="Arla", key="arla")]
        session.add_all(brands)
        session.flush()
        for i in range(57):
            risk = [0.1, 0.5, 0.5, 0.9, 0.25][i % 5]
            row = Listing(listing_id=f"M-{i}", seller_id=f"s{i % 3}", brand_id=brands[i % 2].id,
                          image_sha256=f"{i:064x}", phash=None, risk=risk,
                          decision="pass" if risk < 0.3 else ("review" if risk < 0.8 else "takedown"),
                          model_tag="m", result={"risk": risk}, scored_at=t0 + dt.timedelta(hours=i))
            session.add(row)
            session.flush()
            if i % 4 == 0:
                session.add(Review(listing_row_id=row.id, brand_id=row.brand_id, label="genuine",
                                   image_sha256=row.image_sha256, reviewer_key_id="k"))
    yield home, t0
    home.close()


def _all_pages(home, filters, *, order, limit, visible_to=None):
    from markguard.serving.listings import list_listings

    out, cursor = [], None
    while True:
        page = list_listings(home, filters, order=order, cursor=cursor, limit=limit, visible_to=visible_to)
        assert len(page.listings) <= limit
        out += page.listings
        cursor = page.next
        if cursor is None:
            return out


def test_keyset_pages_cover_every_row_once(many, catalog_backend):
    from markguard.serving.listings import ListingFilters
    from markguard.serving.state.schema import Listing

    home, t0 = many
    with home.sessions() as session:
        rows = list(session.scalars(select(Listing)))
    oatly = rows[0].brand_id
    reviewed = {r.id for r in rows if int(r.listing_id[2:]) % 4 == 0}
    cases = [
        (ListingFilters(), lambda r: True),
        (ListingFilters(decision="review"), lambda r: r.decision == "review"),
        (ListingFilters(min_risk=0.25, max_risk=0.5), lambda r: 0.25 <= r.risk <= 0.5),
        (ListingFilters(reviewed=True), lambda r: r.id in reviewed),
        (ListingFilters(reviewed=False, seller="s1"), lambda r: r.id not in reviewed and r.seller_id == "s1"),
        (ListingFilters(since=t0 + dt.timedelta(hours=10), until=t0 + dt.timedelta(hours=40)),
         lambda r: t0 + dt.timedelta(hours=10) <= r.scored_at < t0 + dt.timedelta(hours=40)),
        (ListingFilters(brand="ARLA"), lambda r: r.brand_id != oatly),
    ]
    for filters, keep in cases:
        wanted = [r for r in rows if keep(r)]
        for limit in (1, 7, 200):
            newest = _all_pages(home, filters, order="newest", limit=limit)
            assert [x["id"] for x in newest] == sorted((r.id for r in wanted), reverse=True), (filters, limit)
            riskiest = _all_pages(home, filters, order="riskiest", limit=limit)
            assert [x["id"] for x in riskiest] == [r.id for r in sorted(wanted, key=lambda r: (r.risk, r.id),
                                                                        reverse=True)], (filters, limit)
    scoped = _all_pages(home, ListingFilters(), order="riskiest", limit=5, visible_to=oatly)
    assert sorted(x["id"] for x in scoped) == sorted(r.id for r in rows if r.brand_id == oatly)
    # the cursor is opaque to callers but only positions a page: it never widens the filters
    first = _all_pages(home, ListingFilters(), order="newest", limit=57)
    assert len(first) == 57


def test_cursor_is_not_an_offset(many, catalog_backend):
    """Rows scored after a page was read do not shift the following page."""
    from markguard.serving.listings import ListingFilters, list_listings
    from markguard.serving.state.schema import Listing
    from markguard.vision.errors import MarkguardError

    home, t0 = many
    page = list_listings(home, ListingFilters(), order="newest", limit=10)
    with home.sessions.begin() as session:
        session.add(Listing(listing_id="new", image_sha256="f" * 64, risk=0.99, decision="takedown", model_tag="m",
                            result={}, scored_at=t0))
    following = list_listings(home, ListingFilters(), order="newest", cursor=page.next, limit=10)
    assert following.listings[0]["id"] == page.listings[-1]["id"] - 1
    key = json.loads(base64.urlsafe_b64decode(page.next + "=" * (-len(page.next) % 4)))
    assert key["o"] == "newest"
    # a forged cursor positions a page or is refused; it never errs in the database
    forged = ['{"o":"riskiest","k":[1e999,5]}', '{"o":"riskiest","k":[NaN,5]}', '{"o":"riskiest","k":[10e400,5]}',
              '{"o":"riskiest","k":[' + "9" * 400 + ',5]}', '{"o":"newest","k":[-1]}', '{"o":"newest","k":[true]}',
              '{"o":"newest","k":"x"}', '[]', '"x"']
    for text in forged:
        cursor = base64.urlsafe_b64encode(text.encode()).decode()
        order = json.loads(text)["o"] if text.startswith("{") else "newest"
        with pytest.raises(MarkguardError):
            list_listings(home, ListingFilters(), order=order, cursor=cursor)
    forged = base64.urlsafe_b64encode(b'{"o":"riskiest","k":[0.5,3]}').decode()
    assert all(x["risk"] < 0.5 or (x["risk"] == 0.5 and x["id"] < 3)
               for x in list_listings(home, ListingFilters(), order="riskiest", cursor=forged).listings)


def _race(home_root, database_url, row_id, keys, *, now=None):
    """Claim `row_id` from one thread per key at once (each with its own Home, like separate workers)."""
    from markguard.serving.listings import claim_listing
    from markguard.serving.state.home import Home

    homes = [Home(home_root, database_url=database_url) for _ in keys]
    barrier = threading.Barrier(len(keys))
    won, lost, errors = [], [], []

    def worker(home, key):
        barrier.wait()
        try:
            claim_listing(home, row_id, key_id=key, now=now)
            won.append(key)
        except Conflict:
            lost.append(key)
        except Exception as exc:  # noqa: BLE001 - any other outcome fails the test below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(h, k)) for h, k in zip(homes, keys, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for h in homes:
        h.close()
    return won, lost, errors


def test_concurrent_claims_exactly_one_wins(many, catalog_backend, database_url):
    from markguard.serving.listings import ReviewClaim
    from markguard.serving.state.schema import Listing

    home, _ = many
    with home.sessions() as session:
        row_ids = list(session.scalars(select(Listing.id).order_by(Listing.id).limit(5)))
    keys = [f"mod{i:02d}" for i in range(8)]
    for row_id in row_ids[:3]:  # a free listing: the insert decides
        won, lost, errors = _race(home.root, database_url, row_id, keys)
        assert not errors and len(won) == 1 and len(lost) == len(keys) - 1, (won, lost, errors)
        with home.sessions() as session:
            assert session.get(ReviewClaim, row_id).key_id == won[0]
    # an expired claim: the conditional update decides
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    won, lost, errors = _race(home.root, database_url, row_ids[0], keys, now=later)
    assert not errors and len(won) == 1 and len(lost) == len(keys) - 1, (won, lost, errors)
    with home.sessions() as session:
        claim = session.get(ReviewClaim, row_ids[0])
        assert claim.key_id == won[0] and claim.expires_at > later


def test_claim_expiry_and_queue(many, catalog_backend):
    from markguard.serving.listings import (
        CLAIM_TTL,
        ListingFilters,
        claim_listing,
        list_listings,
        release_claim,
    )
    from markguard.vision.errors import NotFound

    home, _ = many
    now = dt.datetime.now(dt.UTC)
    first = list_listings(home, ListingFilters(), limit=1).listings[0]["id"]
    claim_listing(home, first, key_id="alice", now=now)
    with pytest.raises(Conflict):
        claim_listing(home, first, key_id="bob", now=now + CLAIM_TTL - dt.timedelta(seconds=1))
    queue = list_listings(home, ListingFilters(unclaimed_for="bob"), limit=1, now=now).listings
    assert queue[0]["id"] != first
    after = now + CLAIM_TTL + dt.timedelta(seconds=1)  # expired: back in everyone's queue, and claimable
    assert list_listings(home, ListingFilters(unclaimed_for="bob"), limit=1, now=after).listings[0]["id"] == first
    assert claim_listing(home, first, key_id="bob", now=after)["moderator"] == "bob"
    with pytest.raises(Conflict):
        release_claim(home, first, key_id="alice", now=after)
    release_claim(home, first, key_id="bob", now=after)
    with pytest.raises(NotFound):
        release_claim(home, first, key_id="bob", now=after)
    with pytest.raises(NotFound):
        claim_listing(home, 10**9, key_id="bob")


def test_detail_names_earlier_listings_of_the_photo_or_a_serial(many, catalog_backend):
    from markguard.serving.listings import listing_detail
    from markguard.serving.state.schema import Listing, ListingSerial

    home, t0 = many
    with home.sessions.begin() as session:
        oatly, arla = (session.scalar(select(Listing.brand_id).where(Listing.listing_id == x)) for x in ("M-0", "M-1"))

        def add(name, brand_id, sha, phash, serial=None):
            row = Listing(listing_id=name, brand_id=brand_id, image_sha256=sha, phash=phash, risk=0.5,
                          decision="review", model_tag="m", result={}, scored_at=t0)
            session.add(row)
            session.flush()
            if serial:
                session.add(ListingSerial(listing_row_id=row.id, brand_id=brand_id, serial_hmac=serial))
            return row.id

        first = add("P-1", oatly, "a" * 64, -5, "h1")
        copy = add("P-2", oatly, "b" * 64, -5)  # re-encoded: same perceptual hash, other bytes
        other_brand = add("P-3", arla, "a" * 64, None, "h1")
        serial_only = add("P-4", oatly, "c" * 64, 77, "h1")
        last = add("P-5", oatly, "a" * 64, -5, "h1")
    detail = listing_detail(home, last)
    assert [x["id"] for x in detail["earlier"]["same_photo"]] == [other_brand, copy, first]
    assert [x["id"] for x in detail["earlier"]["same_serial"]] == [serial_only, other_brand, first]
    scoped = listing_detail(home, last, visible_to=oatly)  # a brand sees its own brand's only
    assert [x["id"] for x in scoped["earlier"]["same_photo"]] == [copy, first]
    assert [x["id"] for x in scoped["earlier"]["same_serial"]] == [serial_only, first]
    assert listing_detail(home, first)["earlier"] == {"same_photo": [], "same_serial": []}
