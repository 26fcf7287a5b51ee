"""The feedback loop end to end, as moderators and brands use it: a review (or a brand's own known fake)
changes the next score of the same photo and of its copies, and a re-review undoes it.

Through the real CLI (in process, as a user types it) and the real HTTP service (`markguard serve`).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from markguard.serving.cli import main

from .real_server import real_server


def _copy(path: Path, *, crop: float = 0.03, quality: int = 80) -> bytes:
    """The same photo re-encoded, resized to 90% and cropped by `crop` of each side: what a counterfeiter
    re-uploading a caught listing's photo does."""
    image = Image.open(path).convert("RGB")
    w, h = image.size
    dx, dy = int(w * crop), int(h * crop)
    image = image.crop((dx, dy, w - dx, h - dy)).resize((int(w * 0.9), int(h * 0.9)))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict]:
    assert main(list(argv)) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def _iconic(grocery: Path, brand: str) -> list[Path]:
    return sorted(p for p in (grocery / "iconic").rglob("*.jpg") if p.name.lower().startswith(brand))


@pytest.fixture()
def catalog(home_dir: Path, grocery: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A home with two brands and their iconic references (so a claim has a rival to be measured against)."""
    for brand in ("Oatly", "Arla"):
        _cli(capsys, "brand", "add", brand)
        _cli(capsys, "enroll", brand, *map(str, _iconic(grocery, brand.lower())[:3]))
    return home_dir


def test_cli_counterfeit_review_takes_down_the_photo_and_its_copies_and_a_genuine_review_undoes_it(
        catalog: Path, grocery: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = sorted((grocery / "train").rglob("Oatly-*.jpg"))[0]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(_copy(photo))
    score = ("score", "--no-ocr", "--brand", "Oatly")
    [before] = _cli(capsys, *score, "--listing", "L-1", "--seller", "s-1", str(photo))
    [copy_before] = _cli(capsys, *score, "--listing", "L-copy", "--seller", "s-2", str(copy))
    assert before["decision"] != "takedown" and copy_before["decision"] != "takedown"  # the loop must change them

    [review] = _cli(capsys, "review", "add", "L-1", "counterfeit", "--note", "fake print")
    assert review["reference_id"] is not None and review["brand"] == "Oatly"
    [again] = _cli(capsys, *score, "--listing", "L-2", str(photo))
    [copy_again] = _cli(capsys, *score, "--listing", "L-copy-2", str(copy))
    for result in (again, copy_again):
        assert result["decision"] == "takedown", result["signals"]
        assert result["signals"]["known_fake_copy"]["value"] == 1.0
        assert result["matches"][0]["kind"] == "counterfeit" and result["matches"][0]["brand"] == "Oatly"

    [undo] = _cli(capsys, "review", "add", "L-1", "genuine", "--note", "brand confirmed")
    assert undo["removed_reference_id"] == review["reference_id"] and undo["reference_id"] is None
    [after] = _cli(capsys, *score, "--listing", "L-3", str(photo))
    assert after["decision"] == before["decision"] and after["risk"] == pytest.approx(before["risk"], abs=1e-4)
    assert all(m["kind"] == "genuine" for m in after["matches"])
    reviews = _cli(capsys, "review", "list", "--listing", "L-1")
    assert [(r["label"], r["reviewer"]) for r in reviews] == [("counterfeit", "cli"), ("genuine", "cli")]
    assert all(r["created_at"] for r in reviews)


@pytest.mark.sqlite_only  # the model's judgement, not the catalog's
def test_brand_enrolled_known_fake_counts_until_the_brand_deletes_it(catalog: Path, grocery: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fake = sorted((grocery / "train").rglob("Arla-*.jpg"))[0]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(_copy(fake, crop=0.02, quality=70))
    score = ("score", "--no-ocr", "--brand", "Arla")
    [exact_before, before] = _cli(capsys, *score, str(fake), str(copy))
    assert before["decision"] != "takedown" and exact_before["decision"] != "takedown"
    [enrolled] = _cli(capsys, "enroll", "Arla", "--kind", "counterfeit", str(fake))
    [exact, near] = _cli(capsys, *score, str(fake), str(copy))
    assert exact["decision"] == near["decision"] == "takedown", (exact["signals"], near["signals"])
    # another brand's claim never shows Arla's known fakes as evidence
    [other] = _cli(capsys, "score", "--no-ocr", "--brand", "Oatly", str(copy))
    assert all(m["kind"] == "genuine" for m in other["matches"])
    # the brand withdraws its known fake: the earlier decisions are back
    _cli(capsys, "reference", "delete", "Arla", *map(str, enrolled["reference_ids"]))
    [exact_after, after] = _cli(capsys, *score, str(fake), str(copy))
    for was, now in ((exact_before, exact_after), (before, after)):
        assert now["decision"] == was["decision"] and now["risk"] == pytest.approx(was["risk"], abs=1e-4)


def test_alliance_shared_known_fakes_count_for_other_brands_until_revoked(
        catalog: Path, grocery: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A factory that fakes several brands reuses its printing: Arla's known fake, once Arla shares it, is
    evidence against an Oatly listing of the same photo; private or revoked, it is not (nor shown)."""
    photo = sorted((grocery / "train").rglob("Oatly-*.jpg"))[2]
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(_copy(photo, crop=0.02, quality=75))
    score = ("score", "--no-ocr", "--no-record", "--brand", "Oatly", str(copy))
    [before] = _cli(capsys, *score)
    assert before["decision"] != "takedown"
    _cli(capsys, "enroll", "Arla", "--kind", "counterfeit", str(photo))  # Arla's own, private known fake
    [private] = _cli(capsys, *score)
    assert private["risk"] == pytest.approx(before["risk"], abs=1e-4)
    assert all(m["kind"] == "genuine" for m in private["matches"])

    assert main(["alliance", "share", "Arla"]) == 0
    capsys.readouterr()
    [shared] = _cli(capsys, *score)
    assert shared["decision"] == "takedown" and shared["signals"]["known_fake_copy"]["value"] == 1.0
    assert [(m["brand"], m["kind"]) for m in shared["matches"][:1]] == [("Arla", "counterfeit")]  # attributed

    assert main(["alliance", "revoke", "Arla"]) == 0
    capsys.readouterr()
    [revoked] = _cli(capsys, *score)
    assert revoked["risk"] == pytest.approx(before["risk"], abs=1e-4)


@pytest.mark.sqlite_only  # the catalog's side runs on both backends in the CLI test above; one server start here
def test_http_review_loop_on_a_real_server(catalog: Path, grocery: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    [platform] = _cli(capsys, "key", "create", "--role", "platform")
    [moderator] = _cli(capsys, "key", "create", "--role", "moderator")
    [oatly] = _cli(capsys, "key", "create", "--role", "brand", "--brand", "Oatly")
    with real_server(catalog, tmp_path / "serve.log", env={"MARKGUARD_OCR": "0"}) as (url, _):
        photo = sorted((grocery / "train").rglob("Oatly-*.jpg"))[1]
        copy = _copy(photo)

        def score(data: bytes, listing: str) -> dict:
            r = httpx.post(url + "/v1/score", headers={"Authorization": f"Bearer {platform['key']}"}, timeout=120,
                           data={"brand": "Oatly", "listing_id": listing, "seller_id": "s-9"},
                           files={"image": ("p.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            return r.json()

        def review(label: str) -> dict:
            r = httpx.post(url + "/v1/reviews", headers={"Authorization": f"Bearer {moderator['key']}"}, timeout=120,
                           json={"listing_id": "H-1", "label": label})
            assert r.status_code == 201, r.text
            return r.json()

        before = score(photo.read_bytes(), "H-1")
        assert before["decision"] != "takedown"
        added = review("counterfeit")["reference_id"]
        assert score(photo.read_bytes(), "H-2")["decision"] == "takedown"
        assert score(copy, "H-3")["decision"] == "takedown"
        assert review("genuine")["removed_reference_id"] == added
        after = score(photo.read_bytes(), "H-4")
        assert after["decision"] == before["decision"] and after["risk"] == pytest.approx(before["risk"], abs=1e-4)
        listed = httpx.get(url + "/v1/reviews", params={"listing_id": "H-1"}, timeout=30,
                           headers={"Authorization": f"Bearer {moderator['key']}"}).json()["reviews"]
        assert [r["label"] for r in listed] == ["counterfeit", "genuine"]
        assert [r["reviewer"] for r in listed] == [moderator["key_id"]] * 2 and all(r["created_at"] for r in listed)
        assert httpx.get(url + "/v1/reviews", timeout=30,
                         headers={"Authorization": f"Bearer {platform['key']}"}).status_code == 403

        # the same loop for a known fake the brand uploads itself, and then withdraws
        fake = sorted((grocery / "train").rglob("Oatly-*.jpg"))[3]
        fake_copy = _copy(fake, crop=0.02, quality=70)
        brand_key = {"Authorization": f"Bearer {oatly['key']}"}
        fake_before, copy_before = score(fake.read_bytes(), "B-1"), score(fake_copy, "B-2")
        assert "takedown" not in (fake_before["decision"], copy_before["decision"])
        r = httpx.post(url + "/v1/brands/Oatly/references", headers=brand_key, data={"kind": "counterfeit"},
                       files={"files": ("fake.jpg", fake.read_bytes(), "image/jpeg")}, timeout=120)
        assert r.status_code == 201, r.text
        [known_fake] = r.json()["added"]
        assert score(fake.read_bytes(), "B-3")["decision"] == score(fake_copy, "B-4")["decision"] == "takedown"
        r = httpx.delete(f"{url}/v1/brands/Oatly/references/{known_fake}", headers=brand_key, timeout=60)
        assert r.status_code == 200, r.text
        for was, data, listing in ((fake_before, fake.read_bytes(), "B-5"), (copy_before, fake_copy, "B-6")):
            now = score(data, listing)
            assert now["decision"] == was["decision"] and now["risk"] == pytest.approx(was["risk"], abs=1e-4)
