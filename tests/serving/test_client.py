"""`markguard.serving.client` against a real `markguard serve`: every call, sync and async, typed answers,
errors with their stable code, and retries that honour the server's own `Retry-After` on 429."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time

import httpx
import pytest

from markguard.serving.client import (
    AsyncClient,
    BatchItem,
    Client,
    MarkguardApiError,
    Reference,
    Score,
    retry_after,
)

from .real_server import real_server

RATE, BURST = 4, 6  # requests/s per key, and at once: low, so the retry test meets the server's real 429


@pytest.fixture(scope="module")
def server(api_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("client") / "home"
    shutil.copytree(api_home.root, root, ignore=shutil.ignore_patterns("bentoml", "*.lock"))
    home = dataclasses.replace(api_home, root=root)
    env = {"MARKGUARD_OCR": "0", "MARKGUARD_RATE": str(RATE), "MARKGUARD_BURST": str(BURST)}
    with real_server(root, root.parent / "serve.log", env=env) as (url, _):
        yield url, home


def test_score_and_batch(server):
    url, home = server
    with Client(url, home.keys["platform"]) as mg:
        one = mg.score(home.photos[0], brand="Oatly", listing_id="cl-1", seller_id="s-1", title="Oatly oat drink")
        assert isinstance(one, Score) and 0 <= one.risk <= 1 and one.decision in ("pass", "review", "takedown")
        assert one.claimed.brand == "Oatly" and one.claimed.title == "Oatly oat drink"
        assert one.matches and one.matches[0].brand in ("Oatly", "Arla")

        photos = [home.photos[1], ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg"), home.photos[2]]
        items = mg.score_batch(photos, listing_ids=["cl-2", "cl-3", "cl-4"])
        assert [type(x) for x in items] == [BatchItem] * 3
        assert [x.listing_id for x in items] == ["cl-2", "cl-3", "cl-4"]
        assert items[0].result is not None and items[2].result is not None and items[1].result is None
        assert items[1].error is not None and items[1].error.status in (415, 422)

        with pytest.raises(MarkguardApiError) as err:  # the platform key may not read a brand
            mg.brand("Oatly")
        assert err.value.status == 403 and err.value.code and err.value.request_id


def test_references_brands_and_reviews(server, grocery):
    url, home = server
    with Client(url, home.keys["arla"]) as arla:
        before = arla.list_references("Arla")
        assert before and all(isinstance(r, Reference) for r in before)
        photo = sorted((grocery / "iconic").rglob("Arla-*.jpg"))[5]
        upload = arla.upload_references("Arla", [photo], product="Arla-Client-Test")
        assert len(upload.added) == 1
        listed = {r.id: r for r in arla.list_references("Arla")}
        assert listed[upload.added[0]].product == "Arla-Client-Test"
        assert arla.delete_reference("Arla", upload.added[0]).deleted == upload.added
        assert upload.added[0] not in {r.id for r in arla.list_references("Arla")}

        brand = arla.update_brand("Arla", review_at=0.4)
        assert brand.name == "Arla" and brand.review_at == 0.4 and arla.brand("Arla").review_at == 0.4
        with pytest.raises(MarkguardApiError) as err:  # another tenant's brand does not exist for this key
            arla.list_references("Oatly")
        assert err.value.status == 404 and err.value.code

    with Client(url, home.keys["platform"]) as platform:
        platform.score(home.photos[2], brand="Arla", listing_id="cl-review", seller_id="s-2")
    with Client(url, home.keys["moderator"]) as moderator:
        review = moderator.review("cl-review", "counterfeit", note="client test")
        assert review.listing_id == "cl-review" and review.label == "counterfeit"
        page = moderator.reviews(listing_id="cl-review")
        assert [r.review_id for r in page.reviews] == [review.review_id]


def test_async_client(server):
    url, home = server

    async def main() -> tuple[Score, list[Reference], list[BatchItem]]:
        async with AsyncClient(url, home.keys["admin"]) as mg:
            score, refs = await asyncio.gather(mg.score(home.photos[0].read_bytes(), brand="Oatly"),
                                               mg.list_references("Oatly"))
            batch = await mg.score_batch(home.photos[:2], brand="Oatly")
            return score, refs, batch

    score, refs, batch = asyncio.run(main())
    assert isinstance(score, Score) and score.claimed.brand == "Oatly"
    assert refs and all(r.id > 0 for r in refs)
    assert [x.index for x in batch] == [0, 1] and all(x.result is not None for x in batch)


def test_retries_honour_the_servers_retry_after(server):
    url, home = server
    time.sleep(BURST / RATE)  # a full bucket
    with Client(url, home.keys["oatly"], retries=0) as impatient:
        outcomes = []
        for _ in range(BURST + 4):
            try:
                impatient.brand("Oatly")
                outcomes.append(200)
            except MarkguardApiError as exc:
                outcomes.append(exc.status)
                assert exc.code and exc.status == 429
    assert 429 in outcomes, outcomes  # the server's limiter really answered 429

    time.sleep(BURST / RATE)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with Client(url, home.keys["oatly"], retries=5, sleep=sleep) as patient:
        assert all(patient.brand("Oatly").name == "Oatly" for _ in range(BURST + 4))
    assert waits and all(w >= 1 for w in waits)  # each wait is the server's Retry-After (whole seconds, ≥ 1)


def test_retry_after_reads_seconds_and_http_dates():
    at = 1_000_000_000.0
    assert retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7
    assert retry_after(httpx.Response(503, headers={"Retry-After": "Sun, 09 Sep 2001 01:47:00 GMT"}), now=at) == 20
    assert retry_after(httpx.Response(503), default=2.5) == 2.5
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"}), default=1) == 1
