"""The HTTP API in process (Starlette TestClient on the real app, engine, model, catalog and index)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from starlette.testclient import TestClient

MAX_BODY = 2 * 1024 * 1024
ERROR_BODIES: list[str] = []


@pytest.fixture(scope="module")
def engine(api_home):
    from markguard.serving.engine import ScoringEngine
    from markguard.serving.state.home import Home

    return ScoringEngine(Home(api_home.root), ocr=False)


def _client(engine, *, rate: float = 1000.0, burst: int = 1000) -> TestClient:
    from markguard.serving.api import Backend, build_app, local_embed
    from markguard.serving.limits import GuardMiddleware, RateLimiter

    backend = Backend(engine=engine, embed=local_embed(engine), limiter=RateLimiter(rate=rate, burst=burst))
    return TestClient(GuardMiddleware(build_app(backend), max_body=MAX_BODY), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(engine) -> TestClient:
    return _client(engine)


def call(client: TestClient, method: str, path: str, key: str | None = None, **kwargs):
    headers = kwargs.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    r = client.request(method, path, headers=headers, **kwargs)
    if r.status_code >= 400:
        ERROR_BODIES.append(r.text)
        assert_problem(r, r.status_code)
    return r


def assert_problem(r, status: int) -> dict:
    """An RFC 9457 problem: its media type, the standard members, our stable code and the request id."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers["content-type"]
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["code"]
    assert body["type"] == f"urn:markguard:problem:{body['code']}"
    assert body["request_id"] == r.headers["x-request-id"]
    return body


def photo(api_home, i: int = 0) -> tuple[str, bytes, str]:
    return ("listing.jpg", api_home.photos[i].read_bytes(), "image/jpeg")


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- auth ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/score"), ("POST", "/v1/score_batch"), ("POST", "/v1/embed"), ("POST", "/v1/brands"),
    ("PATCH", "/v1/brands/Oatly"), ("GET", "/v1/brands/Oatly/references"), ("POST", "/v1/brands/Oatly/references"),
    ("DELETE", "/v1/brands/Oatly/references/1"), ("POST", "/v1/brands/Oatly/serials"), ("POST", "/v1/reviews"),
    ("POST", "/v1/keys"),
])
def test_every_route_needs_a_key(client, method, path):
    assert call(client, method, path).status_code == 401
    r = call(client, method, path, key="mg_0123456789abcdef_not-the-secret")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("role", "method", "path"), [
    ("platform", "POST", "/v1/keys"), ("platform", "POST", "/v1/brands"), ("platform", "GET", "/v1/brands/Oatly/references"),
    ("oatly", "POST", "/v1/score"), ("oatly", "POST", "/v1/reviews"), ("oatly", "POST", "/v1/keys"),
    ("moderator", "POST", "/v1/score"), ("moderator", "POST", "/v1/brands"),
])
def test_wrong_role_is_forbidden(client, api_home, role, method, path):
    assert call(client, method, path, api_home.keys[role], json={}).status_code == 403


def test_brand_key_cannot_see_or_change_another_brand(client, api_home):
    oatly = api_home.keys["oatly"]
    arla_ref = api_home.references["Arla"][0]
    assert call(client, "GET", "/v1/brands/Oatly/references", oatly).status_code == 200
    assert call(client, "GET", "/v1/brands/Arla/references", oatly).status_code == 404
    assert call(client, "GET", "/v1/brands/Arla", oatly).status_code == 404
    assert call(client, "PATCH", "/v1/brands/Arla", oatly, json={"review_at": 0.1}).status_code == 404
    assert call(client, "DELETE", f"/v1/brands/Arla/references/{arla_ref}", oatly).status_code == 404
    assert call(client, "DELETE", f"/v1/brands/Oatly/references/{arla_ref}", oatly).status_code == 404
    assert call(client, "POST", "/v1/brands/Arla/serials", oatly, files={"file": ("s.txt", b"A1\n")}).status_code == 404
    listed = call(client, "GET", "/v1/brands/Arla/references", api_home.keys["arla"]).json()["references"]
    assert arla_ref in [r["id"] for r in listed]


# -- scoring -------------------------------------------------------------------------------------------
def test_score_returns_the_score_json_and_counts_it(client, api_home):
    from prometheus_client import REGISTRY

    before = REGISTRY.get_sample_value("markguard_listings_scored_total", {"route": "score"}) or 0
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], files={"image": photo(api_home)},
             data={"brand": "Oatly", "listing_id": "L-1", "seller_id": "S-1", "title": "oat yoghurt"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 <= body["risk"] <= 1 and body["decision"] in ("pass", "review", "takedown")
    assert body["claimed"] == {"brand": "Oatly", "product": None, "title": "oat yoghurt"}
    assert body["matches"] and body["brand"]["name"] == "Oatly"
    assert REGISTRY.get_sample_value("markguard_listings_scored_total", {"route": "score"}) == before + 1


def test_score_batch_and_embed(client, api_home, engine):
    key = api_home.keys["platform"]
    r = call(client, "POST", "/v1/score_batch", key, files=[("images", photo(api_home, 1)), ("images", photo(api_home, 2))],
             data={"listing_id": ["L-2", "L-3"]})
    assert r.status_code == 200, r.text
    assert [(x["index"], x["listing_id"], x["error"]) for x in r.json()["results"]] == [(0, "L-2", None), (1, "L-3", None)]
    assert all(0 <= x["result"]["risk"] <= 1 for x in r.json()["results"])
    vector = np.array(call(client, "POST", "/v1/embed", key, files={"image": photo(api_home)}).json()["vector"])
    assert vector.shape == (engine.model.config.embedding_dim,) and abs(np.linalg.norm(vector) - 1) < 1e-3


def test_title_is_stored_with_the_listing_and_bounded(client, api_home, engine):
    from sqlalchemy import select

    from markguard.serving.state.schema import Listing

    key, title = api_home.keys["platform"], "Oatly Barista 1 l ∙ original"
    r = call(client, "POST", "/v1/score", key, files={"image": photo(api_home, 1)}, data={"listing_id": "T-9", "title": title})
    assert r.status_code == 200 and r.json()["claimed"]["title"] == title
    with engine.home.sessions() as session:
        assert session.scalars(select(Listing).where(Listing.listing_id == "T-9")).one().result["title"] == title
    r = call(client, "POST", "/v1/score", key, files={"image": photo(api_home, 1)}, data={"title": "x" * 501})
    assert r.status_code == 422 and "title" in r.json()["detail"]


def test_unknown_claimed_brand_is_404(client, api_home):
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], files={"image": photo(api_home)}, data={"brand": "Nope"})
    assert r.status_code == 404


# -- hostile input -------------------------------------------------------------------------------------
def test_body_cap_413_from_content_length_and_from_a_stream(client, api_home):
    key = api_home.keys["platform"]
    big = b"\xff\xd8\xff" + b"\0" * (MAX_BODY + 10)
    assert call(client, "POST", "/v1/score", key, files={"image": ("big.jpg", big)}).status_code == 413

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(MAX_BODY // 65536 + 4):
            yield b"\0" * 65536

    r = call(client, "POST", "/v1/score", key, content=chunks(),
             headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413


@pytest.mark.parametrize(("name", "data", "status"), [
    ("notes.txt", b"hello, this is not an image\n" * 20, 415),
    ("photo.gif", b"GIF89a" + b"\0" * 100, 415),
    ("empty.jpg", b"", 422),
    ("huge.png", png_header(30000, 30000), 422),
])
def test_format_and_pixel_limits(client, api_home, name, data, status):
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], files={"image": (name, data)})
    assert r.status_code == status, r.text


def test_truncated_jpeg_is_422(client, api_home):
    data = api_home.photos[0].read_bytes()
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], files={"image": ("cut.jpg", data[: len(data) // 3])})
    assert r.status_code == 422, r.text


def test_json_body_is_415_and_urls_are_refused(client, api_home):
    key = api_home.keys["platform"]
    assert call(client, "POST", "/v1/score", key, json={"image": "https://example.com/a.jpg"}).status_code == 415
    r = call(client, "POST", "/v1/score", key, data={"image": "https://example.com/a.jpg"}, files={"x": ("x", b"x")})
    assert r.status_code == 400 and "URL" in r.json()["detail"]
    r = call(client, "POST", "/v1/score", key, data={"url": "http://127.0.0.1/x.jpg"}, files={"image": photo(api_home)})
    assert r.status_code == 400


def test_rate_limit_429(engine, api_home):
    limited = _client(engine, rate=0.01, burst=3)
    key = api_home.keys["oatly"]
    codes = [call(limited, "GET", "/v1/brands/Oatly/references", key).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    assert int(limited.get("/v1/brands/Oatly", headers={"Authorization": f"Bearer {key}"}).headers["retry-after"]) >= 1


def test_unexpected_errors_are_json_without_traceback():
    from markguard.serving.limits import GuardMiddleware

    async def broken(scope, receive, send):
        raise RuntimeError("secret internals /etc/passwd")

    r = TestClient(GuardMiddleware(broken), raise_server_exceptions=False).get("/anything")
    assert r.status_code == 500 and r.json()["detail"] == "internal error" and r.json()["request_id"]
    assert "secret" not in r.text and "Traceback" not in r.text


# -- management ----------------------------------------------------------------------------------------
def test_brands_create_and_policy(client, api_home):
    admin, oatly = api_home.keys["admin"], api_home.keys["oatly"]
    assert call(client, "POST", "/v1/brands", admin, json={"name": "Tropicana"}).status_code == 201
    assert call(client, "POST", "/v1/brands", admin, json={"name": "tropicana"}).status_code == 409
    r = call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"review_at": 0.4, "takedown_at": 0.9,
                                                            "wordmarks": ["Oatly", "OATLY!"],
                                                            "serial_pattern": "[A-Z]{2}[0-9]{6}"})
    assert r.status_code == 200, r.text
    assert r.json()["review_at"] == 0.4 and r.json()["wordmarks"] == ["Oatly", "OATLY!"]
    r = call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"review_at": 0.95})
    assert r.status_code == 422 and r.json()["detail"] == "review_at must not exceed takedown_at"  # as the CLI says
    assert call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"serial_pattern": "[unclosed"}).status_code == 422
    assert call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"serial_checksum": "rot13"}).status_code == 422
    assert call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"review_at": 2}).status_code == 422
    assert call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"genuine_from_reviews": 0}).status_code == 422
    assert call(client, "PATCH", "/v1/brands/Oatly", oatly, json={"review_at": "0.5"}).status_code == 422
    assert call(client, "GET", "/v1/brands/Oatly", oatly).json()["takedown_at"] == 0.9


def test_references_upload_list_delete(client, api_home, grocery):
    oatly = api_home.keys["oatly"]
    files = sorted((grocery / "train").rglob("Oatly-*.jpg"))[10:13]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/one.jpg", files[1].read_bytes())
        zf.writestr("two.jpg", files[2].read_bytes())
    r = call(client, "POST", "/v1/brands/Oatly/references", oatly, data={"product": "Oatgurt"},
             files=[("files", (files[0].name, files[0].read_bytes())), ("files", ("refs.zip", archive.getvalue()))])
    assert r.status_code == 201, r.text
    added = r.json()["added"]
    assert len(added) == 3
    listed = {x["id"]: x for x in call(client, "GET", "/v1/brands/Oatly/references", oatly).json()["references"]}
    assert set(added) <= set(listed) and listed[added[0]]["product"] == "Oatgurt"
    assert call(client, "POST", "/v1/brands/Oatly/references", oatly,
                files={"files": ("notes.txt", b"not an image")}).status_code == 415
    assert call(client, "DELETE", f"/v1/brands/Oatly/references/{added[0]}", oatly).json()["deleted"] == [added[0]]
    listed = call(client, "GET", "/v1/brands/Oatly/references", oatly).json()["references"]
    assert added[0] not in [x["id"] for x in listed]
    assert call(client, "DELETE", f"/v1/brands/Oatly/references/{added[0]}", oatly).status_code == 404


def test_serial_import(client, api_home):
    r = call(client, "POST", "/v1/brands/Arla/serials", api_home.keys["arla"],
             files={"file": ("serials.csv", b"serial\nAB123456\nAB123457\nAB123456\n")})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 2 and r.json()["brand"] == "Arla"


def test_review_counterfeit_becomes_a_known_fake(client, api_home):
    platform, moderator = api_home.keys["platform"], api_home.keys["moderator"]
    r = call(client, "POST", "/v1/score", platform, files={"image": photo(api_home, 1)},
             data={"brand": "Oatly", "listing_id": "L-fake"})
    assert r.status_code == 200
    r = call(client, "POST", "/v1/reviews", moderator, json={"listing_id": "L-fake", "label": "counterfeit", "note": "x"})
    assert r.status_code == 201, r.text
    ref = r.json()["reference_id"]
    assert ref is not None and r.json()["brand"] == "Oatly"
    listed = call(client, "GET", "/v1/brands/Oatly/references", api_home.keys["oatly"]).json()["references"]
    assert {x["id"]: x["kind"] for x in listed}[ref] == "counterfeit"
    r = call(client, "POST", "/v1/reviews", moderator, json={"listing_id": "L-1", "label": "genuine"})
    assert r.status_code == 201 and r.json()["reference_id"] is None
    assert call(client, "POST", "/v1/reviews", moderator, json={"listing_id": "nope", "label": "genuine"}).status_code == 404
    assert call(client, "POST", "/v1/reviews", moderator, json={"listing_id": "L-1", "label": "maybe"}).status_code == 422


def test_keys_admin_only_and_usable(client, api_home):
    admin = api_home.keys["admin"]
    r = call(client, "POST", "/v1/keys", admin, json={"role": "brand", "brand": "Arla", "label": "arla ops"})
    assert r.status_code == 201 and r.json()["brand"] == "Arla"
    new = r.json()["key"]
    assert call(client, "GET", "/v1/brands/Arla/references", new).status_code == 200
    assert call(client, "GET", "/v1/brands/Oatly/references", new).status_code == 404
    assert call(client, "POST", "/v1/keys", admin, json={"role": "brand"}).status_code == 422
    assert call(client, "POST", "/v1/keys", admin, json={"role": "root"}).status_code == 422


def test_score_batch_fails_only_the_bad_photo_and_names_it(client, api_home):
    """A corrupt photo, an empty one and an unknown claimed brand each fail alone, in place, named by
    their listing_id; the good photos around them are scored."""
    good = api_home.photos[0].read_bytes()
    files = [("images", ("a.jpg", good, "image/jpeg")), ("images", ("cut.jpg", good[: len(good) // 3], "image/jpeg")),
             ("images", ("b.jpg", good, "image/jpeg")), ("images", ("empty.jpg", b"", "image/jpeg")),
             ("images", ("c.jpg", good, "image/jpeg"))]
    r = call(client, "POST", "/v1/score_batch", api_home.keys["platform"], files=files,
             data={"listing_id": ["B-0", "B-1", "B-2", "B-3", "B-4"], "brand": ["Oatly", "Oatly", "Nope", "Oatly", "Oatly"]})
    assert r.status_code == 200, r.text
    items = r.json()["results"]
    assert [x["listing_id"] for x in items] == ["B-0", "B-1", "B-2", "B-3", "B-4"]
    assert [x["index"] for x in items] == [0, 1, 2, 3, 4]
    assert [x["filename"] for x in items] == ["a.jpg", "cut.jpg", "b.jpg", "empty.jpg", "c.jpg"]
    ok = [x["result"] is not None and x["error"] is None for x in items]
    assert ok == [True, False, False, False, True]
    assert [(x["error"]["status"], x["error"]["code"]) for x in items if x["error"]] == [
        (422, "corrupt_image"), (404, "not_found"), (422, "invalid")]
    assert all(x["error"]["request_id"] == r.headers["x-request-id"] for x in items if x["error"])
    assert items[0]["result"]["claimed"]["brand"] == "Oatly"
    # a field given neither once nor once per photo refuses the whole request: no photo is guessed a claim
    r = call(client, "POST", "/v1/score_batch", api_home.keys["platform"], files=files,
             data={"listing_id": ["B-0", "B-1"]})
    assert r.status_code == 422 and "listing_id" in r.json()["detail"], r.text


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/v1/nowhere", 404, "not_found"),
    ("GET", "/nowhere/at/all", 404, "not_found"),
    ("GET", "/v1/score", 405, "method_not_allowed"),
    ("DELETE", "/v1/keys", 405, "method_not_allowed"),
    ("GET", "/v1/brands/", 404, "not_found"),  # no redirect to a slashless path
])
def test_unknown_routes_and_wrong_methods_are_problems(client, method, path, status, code):
    r = client.request(method, path)
    assert assert_problem(r, status)["code"] == code
    if status == 405:
        assert "POST" in r.headers["allow"]


def test_405_names_every_method_of_the_path(client):
    """`GET` and `PATCH /v1/brands/{brand}` are two routes: a 405 names both (not only the first's)."""
    r = client.delete("/v1/brands/Oatly")
    assert_problem(r, 405)
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "PATCH"}
    r = client.put("/v1/reviews")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "POST"}


def test_validation_errors_are_problems_naming_the_field(client, api_home):
    r = call(client, "POST", "/v1/brands", api_home.keys["admin"], json={"name": ""})
    body = assert_problem(r, 422)
    assert body["code"] == "invalid" and body["errors"][0]["loc"] == ["body", "name"] and "name" in body["detail"]
    assert call(client, "POST", "/v1/brands", api_home.keys["admin"], json={"name": "   "}).status_code == 422
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], data={"brand": "Oatly"}, files={"imgae": ("x", b"x")})
    assert "unknown form field 'imgae'" in assert_problem(r, 422)["detail"]  # a misspelt field is not ignored
    r = call(client, "POST", "/v1/score", api_home.keys["platform"], files={"brand": (None, "Oatly")})
    assert assert_problem(r, 422)["errors"][0]["loc"] == ["body", "image"]


def test_outer_plain_404_and_405_become_problems():
    """Routes outside the API (BentoML's router, in the service) answer text/plain 404/405: the guard
    answers them as problems too."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from markguard.serving.limits import GuardMiddleware

    async def ok(request):
        return PlainTextResponse("ok")

    client = TestClient(GuardMiddleware(Starlette(routes=[Route("/healthz", ok, methods=["GET"])])))
    assert client.get("/healthz").text == "ok"
    assert assert_problem(client.get("/nope"), 404)["code"] == "not_found"
    r = client.post("/healthz")
    assert assert_problem(r, 405)["code"] == "method_not_allowed" and "GET" in r.headers["allow"]


_BINARY_ROUTES = {"/v1/rings/{ring_id}/export", "/v1/listings/{listing}/image", "/v1/listings/{listing}/evidence.png",
                  "/v1/references/{reference}/image"}  # a zip, photos: typed by their media types


def test_openapi_documents_every_route_under_v1_typed(client):
    doc = client.get("/docs.json").json()
    assert client.get("/v1/openapi.json").json() == doc
    paths = doc["paths"]
    for path in ("/score", "/score_batch", "/embed", "/brands", "/brands/{brand}", "/brands/{brand}/references",
                 "/brands/{brand}/references/{reference_id}", "/brands/{brand}/serials", "/reviews", "/keys",
                 "/scans", "/scans/{scan_id}", "/rings", "/rings/{ring_id}", "/rings/{ring_id}/export", "/reports"):
        assert "/v1" + path in paths and path not in paths  # the unversioned aliases are hidden
    scheme = doc["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    schemas = doc["components"]["schemas"]
    uploads = {"/v1/score": ["image"], "/v1/score_batch": ["images"], "/v1/embed": ["image"],
               "/v1/brands/{brand}/references": ["files"], "/v1/brands/{brand}/serials": ["file"]}
    for path, fields in uploads.items():
        op = paths[path]["post"]
        body = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
        props = schemas[body]["properties"]
        for field in fields:
            prop = props[field]
            binary = prop.get("items", prop)
            assert binary.get("format") == "binary" or binary.get("contentMediaType") == "application/octet-stream", prop
        assert field in schemas[body]["required"]
    for path, item in paths.items():
        for method, op in item.items():
            if path == "/metrics":
                continue
            assert op["security"] == [{"apiKey": []}], (path, method)
            for status in ("401", "403", "429", "500"):
                assert op["responses"][status]["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}, (path, status)
            status, ok = next((k, v) for k, v in op["responses"].items() if k.startswith("2"))
            if status == "204":
                assert not ok.get("content"), (path, method)  # no body, as documented
            elif path in _BINARY_ROUTES:
                assert ok["content"] and "application/json" not in ok["content"], (path, method)
            else:
                assert ok["content"]["application/json"]["schema"], (path, method)
    assert schemas["ScoreOut"]["properties"]["decision"]["$ref"].endswith("/Decision")
    assert "HTTPValidationError" not in schemas


def test_deprecated_unversioned_aliases_still_answer(client, api_home):
    r = call(client, "POST", "/score", api_home.keys["platform"], files={"image": photo(api_home)})
    assert r.status_code == 200 and 0 <= r.json()["risk"] <= 1
    assert call(client, "GET", "/brands/Oatly/references", api_home.keys["oatly"]).status_code == 200
    assert call(client, "GET", "/brands/Oatly/references").status_code == 401


def test_score_models_mirror_the_score_result():
    """The response models are ScoreResult's dataclasses, field for field: a field added to the score
    JSON without its schema (or the reverse) fails here."""
    import dataclasses

    from markguard.serving.routes import schemas
    from markguard.vision import evidence, ocr, scoring, text
    from markguard.vision.pipeline import ListingClaim

    pairs = [(schemas.ScoreOut, scoring.ScoreResult), (schemas.MatchOut, scoring.Match),
             (schemas.SignalOut, scoring.Signal), (schemas.NamedScoreOut, scoring.NamedScore),
             (schemas.OcrOut, evidence.OcrEvidence), (schemas.SerialOut, evidence.SerialEvidence),
             (schemas.WordmarkHitOut, text.WordmarkHit), (schemas.OcrLineOut, ocr.OcrLine),
             (schemas.ClaimOut, ListingClaim)]
    for model, cls in pairs:
        in_json = {f.name for f in dataclasses.fields(cls) if f.metadata.get("json", True)}
        assert set(model.model_fields) == in_json, model


def test_catalog_models_mirror_the_catalog_dataclasses():
    """The brand, reference and review response models are the catalog's dataclasses, field for field
    (the policy's types too): a field added to `serving.catalog.Policy` without `PolicyOut`, or the
    reverse, fails here."""
    import dataclasses
    import typing

    from markguard.serving import brands, catalog, reviews
    from markguard.serving.routes import schemas

    assert {n: f.annotation for n, f in schemas.PolicyOut.model_fields.items()} == typing.get_type_hints(catalog.Policy)
    pairs = [(schemas.PolicyOut, catalog.Policy, set()), (schemas.BrandSummaryOut, brands.BrandSummary, set()),
             (schemas.ReviewOut, reviews.ReviewReport, set()),
             (schemas.ReferenceOut, catalog.ReferenceInfo, {"brand"})]  # the listing names the brand once
    for model, cls, left_out in pairs:
        assert set(model.model_fields) == {f.name for f in dataclasses.fields(cls)} - left_out, model
    assert set(schemas.BrandOut.model_fields) == {f.name for f in dataclasses.fields(catalog.Policy)} | {"summary"}


def test_swagger_ui_is_served_offline_and_root_redirects(client):
    import re

    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "docs"
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert urls and not [u for u in urls if "//" in u], urls  # nothing from another host
    for url in urls:
        assert client.get("/" + url).status_code == 200, url
    assert client.get("/docs/assets/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/docs/assets/..%2Fhttp_app.py").status_code == 404
    assert client.get("/openapi.json").status_code == 404


def test_no_error_body_shows_a_traceback():
    assert ERROR_BODIES
    for body in ERROR_BODIES:
        assert "Traceback" not in body and 'File "' not in body
