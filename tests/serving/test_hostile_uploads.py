"""A small upload cannot exhaust memory: zips are checked (overlap, size, ratio) before any member is
inflated, and a request's photos are charged against a budget of decoded pixels from their headers."""

from __future__ import annotations

import zipfile

import pytest

from markguard.serving.caps import CAPS

from .hostile import HOSTILE_IMAGES, call, hostile_zips, repeated_entry_zip, small_jpeg, solid_png

ZIPS = hostile_zips()


@pytest.mark.parametrize("name", [n for n in ZIPS if n not in ("not-images", "empty")])
def test_hostile_zips_are_refused_by_the_reader(tmp_path, name):
    from markguard.vision.archive import ArchiveError, iter_zip_images

    data, _, word = ZIPS[name]
    path = tmp_path / "x.zip"
    path.write_bytes(data)
    with pytest.raises(ArchiveError) as caught:
        list(iter_zip_images(path))
    assert word in str(caught.value)


def test_repeated_entries_are_refused_before_any_member_is_inflated(tmp_path, monkeypatch):
    from markguard.vision.archive import ArchiveError, iter_zip_images

    path = tmp_path / "x.zip"
    path.write_bytes(repeated_entry_zip(small_jpeg(), 500))

    def inflate(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a member was inflated")

    monkeypatch.setattr(zipfile.ZipFile, "open", inflate)
    with pytest.raises(ArchiveError, match="overlap"):
        list(iter_zip_images(path))


def test_legitimate_zips_still_read(tmp_path):
    from markguard.vision.archive import iter_zip_images

    path = tmp_path / "ok.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"dir/{i}.jpg", small_jpeg(i))
        zf.writestr("dir/", b"")
    assert [m.name for m in iter_zip_images(path)] == [f"dir/{i}.jpg" for i in range(5)]


def test_repeated_entry_zip_upload_is_refused_in_process(attack_client, attack_home):
    r = call(attack_client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files={"files": ("refs.zip", repeated_entry_zip(small_jpeg(3), 300))})
    assert r.status_code == 422 and "overlap" in r.json()["detail"], r.text


@pytest.mark.parametrize("name", list(HOSTILE_IMAGES))
def test_hostile_images_on_score_and_upload(attack_client, attack_home, name):
    data, allowed = HOSTILE_IMAGES[name]
    r = call(attack_client, "POST", "/v1/score", attack_home.keys["platform"], files={"image": ("x.png", data)})
    assert r.status_code in allowed | {200}, r.text
    r = call(attack_client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files={"files": ("x.png", data)})
    assert r.status_code in allowed, r.text


def test_score_batch_over_the_pixel_budget_is_413_before_decoding(attack_client, attack_home, monkeypatch):
    from markguard.serving.engine import ScoringEngine

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("decoded")

    monkeypatch.setattr(ScoringEngine, "plan", never)
    big = solid_png(7200, 5400)  # 38.9 MP in about 100 KB
    r = call(attack_client, "POST", "/v1/score_batch", attack_home.keys["platform"],
             files=[("images", (f"{i}.png", big)) for i in range(4)])
    assert r.status_code == 413 and "pixels per request" in r.json()["detail"], r.text


def test_reference_upload_over_the_pixel_budget_is_413(attack_client, attack_home):
    big = solid_png(7200, 5400, (9, 9, 9))
    n = CAPS.upload_pixels // (7200 * 5400) + 1
    r = call(attack_client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files=[("files", (f"{i}.png", big)) for i in range(n)])
    assert r.status_code == 413, r.text


def test_image_size_reads_the_header_only():
    from markguard.vision.decode import image_size

    assert image_size(solid_png(7200, 5400)) == (7200, 5400)


def test_the_process_pixel_pool_is_shared_and_given_back(attack_client, attack_home, monkeypatch):
    from markguard.serving import budget

    pool = budget.PixelPool(10_000_000)
    monkeypatch.setattr(budget, "PROCESS_PIXELS", pool)
    image = ("p.png", solid_png(3000, 2000))  # 6 MP
    platform = attack_home.keys["platform"]
    assert pool.take(5_000_000)  # held by another request in flight
    r = call(attack_client, "POST", "/v1/embed", platform, files={"image": image})
    assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
    pool.give(5_000_000)
    for _ in range(3):  # each request gives its share back when it ends, refused or not
        assert call(attack_client, "POST", "/v1/embed", platform, files={"image": image}).status_code == 200
        assert pool.held == 0
    r = call(attack_client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files=[("files", (f"{i}.png", solid_png(3000, 2000, (i, 2, 3)))) for i in range(3)])
    assert r.status_code == 201, r.text  # 18 MP, but decoded one at a time: holds 6 MP of the pool
    assert pool.held == 0
