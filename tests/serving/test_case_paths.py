"""Case bundles name their files by what the server decided (the catalog row, the photo's hash), never by a
marketplace's `listing_id`: a `listing_id` with `../` or `/` stays data in `case.json`, two listings sharing
one keep a file each; annotated photos are drawn at a bounded size, charged to the process's pixel budget."""

from __future__ import annotations

import io
import json
import types
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from sqlalchemy import update

from markguard.serving.intelligence.rings import list_rings, rebuild_rings
from markguard.serving.state.schema import Listing

from .test_rings import MASTER, Catalog


@pytest.fixture()
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "home")


def _ring(catalog: Catalog, photos: list[bytes], listing_ids: list[str]) -> tuple[int, list[int]]:
    """A ring of sellers reposting one photo with one cloned serial, its listings given `listing_ids`."""
    rows = [catalog.add(f"r{i}", phash=MASTER ^ (1 << i), decision="review", serial="OA-999", photo=photo)
            for i, photo in enumerate(photos)]
    with catalog.home.sessions.begin() as s:
        for row, listing_id in zip(rows, listing_ids, strict=True):
            s.execute(update(Listing).where(Listing.id == row).values(listing_id=listing_id))
    rebuild_rings(catalog.home)
    with catalog.home.sessions() as s:
        return list_rings(s)[0]["id"], rows


def test_export_names_annotated_photos_by_catalog_row(catalog: Catalog, grocery: Path, tmp_path: Path):
    """Over the API: a traversing `listing_id` writes nothing outside the bundle, one with a `/` is no 500,
    and two listings with one `listing_id` do not overwrite each other."""
    from starlette.testclient import TestClient

    from markguard.serving.api import build_app
    from markguard.serving.intelligence.cases import verify_case
    from markguard.serving.keys import Role, create_key
    from markguard.serving.limits import RateLimiter

    escape = "../" * 16 + (tmp_path / "escaped").as_posix().lstrip("/")
    listing_ids = [escape, "shop/123", "same", "same"]
    photos = [p.read_bytes() for p in sorted((grocery / "train").rglob("Oatly-*.jpg"))[:4]]
    ring_id, rows = _ring(catalog, photos, listing_ids)
    key = create_key(catalog.home, role=Role.INVESTIGATOR)[0]
    backend = types.SimpleNamespace(home=catalog.home, limiter=RateLimiter(rate=1000.0, burst=1000))
    client = TestClient(build_app(backend), raise_server_exceptions=False)
    r = client.post(f"/v1/rings/{ring_id}/export", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    assert not list(tmp_path.glob("escaped*"))
    out = tmp_path / "bundle"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = zf.namelist()
        zf.extractall(out)
    assert sorted(n for n in names if n.startswith("annotated/")) == sorted(f"annotated/{row}.png" for row in rows)
    case = json.loads((out / "case.json").read_text())
    assert {(x["row"], x["listing_id"], x["annotated"]) for x in case["listings"]} == {
        (row, listing_id, f"annotated/{row}.png") for row, listing_id in zip(rows, listing_ids, strict=True)}
    assert verify_case(out) == []


def test_annotated_photo_is_bounded_and_charged_to_the_pixel_budget(catalog: Catalog, tmp_path: Path):
    """A 3000 x 2400 photo is drawn at most `ANNOTATED_SIDE` on a side (the photo as kept is in `photos/`);
    an export while the process holds its pixels answers 503, and gives what it took back."""
    from starlette.testclient import TestClient

    from markguard.serving.api import build_app
    from markguard.serving.budget import PROCESS_PIXELS
    from markguard.serving.intelligence.cases import ANNOTATED_SIDE, export_case
    from markguard.serving.keys import Role, create_key
    from markguard.serving.limits import RateLimiter

    rng = np.random.default_rng(0)
    big = [cv2.imencode(".jpg", rng.integers(0, 255, (2400, 3000, 3), np.uint8))[1].tobytes() for _ in range(2)]
    ring_id, rows = _ring(catalog, big, ["L-a", "L-b"])
    out = tmp_path / "case"
    export_case(catalog.home, ring_id, out, actor="tester", role="investigator")  # the CLI's way: no pool
    for row in rows:
        drawn = cv2.imread(str(out / "annotated" / f"{row}.png"))
        assert drawn.shape[1] == ANNOTATED_SIDE and drawn.shape[0] < 2400, drawn.shape
    key = create_key(catalog.home, role=Role.INVESTIGATOR)[0]
    backend = types.SimpleNamespace(home=catalog.home, limiter=RateLimiter(rate=1000.0, burst=1000))
    client = TestClient(build_app(backend), raise_server_exceptions=False)
    before = PROCESS_PIXELS.held
    room = PROCESS_PIXELS.capacity - before - 3000 * 2400 + 1
    assert PROCESS_PIXELS.take(room)
    try:
        r = client.post(f"/v1/rings/{ring_id}/export", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 503 and r.json()["code"] == "busy", r.text
    finally:
        PROCESS_PIXELS.give(room)
    assert client.post(f"/v1/rings/{ring_id}/export", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert PROCESS_PIXELS.held == before
