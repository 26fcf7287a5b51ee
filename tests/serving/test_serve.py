"""One real `markguard serve` on a free loopback port: ready, scores a real photo with a real key, stops."""

from __future__ import annotations

import re

import httpx

from .real_server import real_server


def _count_references(root) -> int:
    from sqlalchemy import func, select

    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import Reference

    home = Home(root)
    try:
        with home.sessions() as session:
            return session.scalar(select(func.count(Reference.id)))
    finally:
        home.close()


def test_markguard_serve_scores_a_real_photo(api_home, tmp_path):
    # requests shared by two embedders
    with real_server(api_home.root, tmp_path / "serve.log", env={"MARKGUARD_EMBED_WORKERS": "2"}) as (url, _):
        headers = {"Authorization": f"Bearer {api_home.keys['platform']}"}
        photo = api_home.photos[0]
        r = httpx.post(url + "/v1/score", headers=headers, timeout=120,
                       data={"brand": "Oatly", "listing_id": "srv-1", "title": "Oatly oat drink"},
                       files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["claimed"] == {"brand": "Oatly", "product": None, "title": "Oatly oat drink"}
        assert 0 <= body["risk"] <= 1 and "lines" in body["ocr"]
        assert r.headers["x-request-id"]
        assert httpx.post(url + "/v1/score", files={"image": ("a.jpg", b"x")}, timeout=30).status_code == 401
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert 'markguard_listings_scored_total{route="score"} 1.0' in metrics
        assert "bentoml_service_adaptive_batch_size" in metrics
        references = _count_references(api_home.root)
        assert re.search(rf"^markguard_index_size(\{{[^}}]*\}})? {references}\.0$", metrics, re.M), metrics
        assert re.search(r"^markguard_ocr_seconds_count(\{[^}]*\})? 1\.0$", metrics, re.M)  # the photo was read once
        _check_public_surface(url, headers, photo)


def _check_public_surface(url: str, headers: dict[str, str], photo) -> None:
    """One documented surface through BentoML's router: the API's OpenAPI document at /docs.json, Swagger
    UI at /docs with local assets, / redirecting to it, BentoML's other pages gone, problems for the rest."""
    doc = httpx.get(url + "/docs.json", timeout=30).json()
    assert "/v1/brands/{brand}/references" in doc["paths"] and "/brands/{brand}/references" not in doc["paths"]
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    r = httpx.get(url + "/", timeout=30)
    assert r.status_code == 307 and r.headers["location"] == "docs"
    page = httpx.get(url + "/docs", timeout=30)
    assert page.status_code == 200 and "googletagmanager" not in page.text and "https://" not in page.text
    assert httpx.get(url + "/docs/assets/swagger-ui-bundle.js", timeout=30).status_code == 200
    for path, method, status in (("/schema.json", "GET", 404), ("/static_content/index.css", "GET", 404),
                                 ("/openapi.json", "GET", 404), ("/no/such/route", "GET", 404),
                                 ("/v1/score", "GET", 405)):
        r = httpx.request(method, url + path, timeout=30)
        assert r.status_code == status and r.headers["content-type"].startswith("application/problem+json"), path
        assert r.json()["request_id"] == r.headers["x-request-id"]
    assert httpx.get(url + "/readyz", timeout=30).status_code == 200
    r = httpx.post(url + "/score", headers=headers, timeout=120,  # the deprecated unversioned alias
                   files={"image": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and 0 <= r.json()["risk"] <= 1
