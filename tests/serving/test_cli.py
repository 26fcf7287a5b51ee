"""The CLI contract: brand add → enroll → score, and every bad input a clear one-line error."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from markguard.serving.cli import main

SCORE_FIELDS = {"image", "risk", "decision", "brand", "product", "claimed", "matches", "model", "elapsed_ms",
                "signals", "ocr", "duplicates", "provisional"}
MILK = "Milk/Arla-Standard-Milk"
OTHER_MILK = "Milk/Arla-Ecological-Medium-Fat-Milk"


def _default_tag() -> str:
    from markguard.serving.registry import SHIPPED_MODEL_DIR
    from markguard.vision.artifact import load_artifact

    return load_artifact(SHIPPED_MODEL_DIR).tag


def run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


def _iconic(grocery: Path, product: str) -> Path:
    return next((grocery / "iconic" / "Packages" / product).glob("*_Iconic.jpg"))


def _val(grocery: Path, product: str, n: int = 1) -> list[Path]:
    return sorted((grocery / "val" / "Packages" / product).glob("*.jpg"))[:n]


def _state(home: Path) -> tuple[str, str]:
    """A fingerprint of catalog rows and the index manifest, to prove a failure changed nothing."""
    from sqlalchemy import text

    from markguard.serving.state.home import Home

    opened = Home(home)  # the catalog of MARKGUARD_DATABASE_URL, else the home's SQLite file
    with opened.engine.connect() as con:
        rows = [tuple(r) for r in con.execute(text('SELECT id, brand_id, product_id, kind, sha256 FROM "references" ORDER BY id'))]
        rows += [tuple(r) for r in con.execute(text("SELECT id, name FROM products ORDER BY id"))]
    opened.close()
    manifests = sorted((home / "index").glob("*/manifest.json"))
    return repr(rows), "".join(m.read_text() for m in manifests)


@pytest.fixture()
def enrolled(home_dir: Path, grocery: Path, capsys) -> Path:
    assert run(capsys, "brand", "add", "Arla")[0] == 0
    for product in (MILK, OTHER_MILK):
        code, out, _ = run(capsys, "enroll", "Arla", str(_iconic(grocery, product)), "--product", product.split("/")[1])
        assert code == 0 and out[0]["added"] == 1
    return home_dir


def test_score_contract(enrolled: Path, grocery: Path, capsys) -> None:
    photos = _val(grocery, MILK, 2)
    code, results, _ = run(capsys, "score", *map(str, photos))
    assert code == 0 and len(results) == 2
    for photo, result in zip(photos, results, strict=True):
        assert SCORE_FIELDS <= set(result)
        assert result["image"] == str(photo)  # the path exactly as given
        assert 0.0 <= result["risk"] <= 1.0
        assert result["decision"] in ("pass", "review", "takedown")
        assert result["claimed"] == {"brand": None, "product": None}
        assert result["brand"]["name"] in ("Arla", None)
        assert result["model"] == _default_tag()
        assert result["provisional"] is False  # the shipped model has a calibrated fusion
        match = result["matches"][0]
        assert {"reference_id", "brand", "product", "kind", "similarity", "inliers", "box"} <= set(match)
        assert result["matches"] == sorted(result["matches"], key=lambda m: -m["similarity"])


@pytest.mark.sqlite_only  # the model's judgement, not the catalog's
def test_claim_changes_the_judged_product(enrolled: Path, grocery: Path, capsys) -> None:
    photo = str(_val(grocery, MILK)[0])
    _, (true_claim,), _ = run(capsys, "score", photo, "--brand", "arla", "--product", "Arla-Standard-Milk", "--no-ocr")
    _, (false_claim,), _ = run(
        capsys, "score", photo, "--brand", "Arla", "--product", "Arla-Ecological-Medium-Fat-Milk", "--no-ocr"
    )
    assert true_claim["claimed"] == {"brand": "arla", "product": "Arla-Standard-Milk"}
    assert true_claim["product"]["name"] == "Arla-Standard-Milk"
    assert false_claim["product"]["name"] == "Arla-Ecological-Medium-Fat-Milk"
    assert true_claim["signals"]["genuine_similarity"]["value"] != false_claim["signals"]["genuine_similarity"]["value"]


@pytest.mark.sqlite_only  # the model's judgement, not the catalog's
def test_scores_are_identical_in_a_new_process(enrolled: Path, grocery: Path, capsys) -> None:
    photo = str(_val(grocery, MILK)[0])
    _, (here,), _ = run(capsys, "score", photo, "--brand", "Arla", "--no-record")
    proc = subprocess.run(
        [sys.executable, "-m", "markguard.serving.cli", "score", photo, "--brand", "Arla", "--no-record",
         "--home", str(enrolled)],
        capture_output=True, text=True, check=True,
    )
    there = json.loads(proc.stdout)
    for key in ("risk", "decision", "brand", "product", "matches"):
        assert here[key] == there[key], key
    # unrounded signal values may differ in the last float32 digits (another process, other thread pools)
    assert here["signals"].keys() == there["signals"].keys()
    for name, signal in here["signals"].items():
        other = there["signals"][name]
        assert (signal["value"] is None) == (other["value"] is None), name
        assert signal["value"] is None or signal["value"] == pytest.approx(other["value"], abs=1e-6), name
        assert signal["contribution"] == pytest.approx(other["contribution"], abs=1e-6), name


def test_duplicate_enroll_is_skipped(enrolled: Path, grocery: Path, capsys) -> None:
    code, (out,), _ = run(capsys, "enroll", "Arla", str(_iconic(grocery, MILK)), "--product", "Arla-Standard-Milk")
    assert code == 0 and out["added"] == 0 and out["duplicates"] == 1


def test_reference_list_and_delete(enrolled: Path, capsys) -> None:
    _, refs, _ = run(capsys, "reference", "list", "Arla")
    assert len(refs) == 2
    assert run(capsys, "reference", "delete", "Arla", str(refs[0]["id"]))[0] == 0
    _, refs_after, _ = run(capsys, "reference", "list", "Arla")
    assert [r["id"] for r in refs_after] == [refs[1]["id"]]
    code, _, err = run(capsys, "reference", "delete", "Arla", "999")
    assert code == 2 and "no reference 999" in err


def _assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("markguard: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _bad_crc_zip(path: Path) -> Path:
    """A stored member whose bytes no longer match the CRC in its header."""
    _zip(path, {"a.jpg": _jpeg()})
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # inside the member's data (the local header is 35 bytes)
    path.write_bytes(bytes(data))
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, needles",
    [
        (lambda d: d / "missing.jpg", ["missing.jpg", "no such file"]),
        (lambda d: _write(d / "empty.jpg", b""), ["empty.jpg", "empty"]),
        (lambda d: _write(d / "notes.jpg", b"hello"), ["notes.jpg", "not a JPEG"]),
        (lambda d: _write(d / "cut.jpg", _jpeg()[:300]), ["cut.jpg", "corrupt"]),
        (lambda d: (d / "emptydir").mkdir() or d / "emptydir", ["emptydir", "no images"]),
        (lambda d: _zip(d / "evil.zip", {"../../etc/x.jpg": _jpeg()}), ["evil.zip", "unsafe path"]),
        (lambda d: _zip(d / "abs.zip", {"/tmp/x.jpg": _jpeg()}), ["abs.zip", "unsafe path"]),
        (lambda d: _zip(d / "bomb.zip", {"a.jpg": b"\0" * 20_000_000}, zipfile.ZIP_DEFLATED), ["bomb.zip", "zip bomb"]),
        (lambda d: _bad_crc_zip(d / "crc.zip"), ["a.jpg", "corrupt"]),
    ],
    ids=["missing", "zero-bytes", "text", "truncated", "empty-folder", "zip-dotdot", "zip-absolute", "zip-bomb",
         "zip-bad-crc"],
)
def test_bad_enroll_input_changes_nothing(enrolled: Path, grocery: Path, tmp_path: Path, capsys, make, needles) -> None:
    bad = make(tmp_path)
    good = _val(grocery, MILK)[0]
    before = _state(enrolled)
    code, _, err = run(capsys, "enroll", "Arla", str(good), str(bad), "--product", "New-Product")
    _assert_one_line_error(code, err, *needles)
    assert _state(enrolled) == before


def test_unknown_brand(enrolled: Path, grocery: Path, capsys) -> None:
    photo = str(_val(grocery, MILK)[0])
    code, _, err = run(capsys, "enroll", "Nope", photo)
    _assert_one_line_error(code, err, "unknown brand 'Nope'")
    code, _, err = run(capsys, "score", photo, "--brand", "Nope", "--no-ocr")
    _assert_one_line_error(code, err, "unknown brand 'Nope'")
    code, _, err = run(capsys, "score", photo, "--brand", "Arla", "--product", "Nope", "--no-ocr")
    _assert_one_line_error(code, err, "unknown product 'Nope'")


@pytest.mark.sqlite_only  # the scoring loop's error handling, not the catalog's
def test_score_reports_each_bad_photo_and_scores_the_rest(enrolled: Path, grocery: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 50)
    good = str(_val(grocery, MILK)[0])
    code, results, err = run(capsys, "score", good, str(bad), good, "--no-ocr")
    assert code == 2
    assert [r["image"] for r in results] == [good, good]
    assert err.count("markguard: error:") == 1 and "bad.png" in err and "Traceback" not in err


def test_zip_enroll(home_dir: Path, grocery: Path, tmp_path: Path, capsys) -> None:
    run(capsys, "brand", "add", "Arla")
    photos = _val(grocery, MILK, 3)
    archive = _zip(tmp_path / "refs.zip", {f"dir/{p.name}": p.read_bytes() for p in photos} | {"readme.txt": b"hi"})
    code, (out,), _ = run(capsys, "enroll", "Arla", str(archive))
    assert code == 0 and out["added"] == 3
    blobs = sorted(p.name for p in (home_dir / "blobs").rglob("*") if p.is_file())
    assert blobs == sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in photos)


def test_brand_names_and_policy(home_dir: Path, capsys) -> None:
    assert run(capsys, "brand", "add", "God Morgon")[0] == 0
    code, _, err = run(capsys, "brand", "add", "god  morgon")
    _assert_one_line_error(code, err, "already exists")
    code, (shown,), _ = run(capsys, "brand", "update", "GOD MORGON", "--review-at", "0.3", "--takedown-at", "0.9")
    assert shown["name"] == "God Morgon" and shown["review_at"] == 0.3
    code, _, err = run(capsys, "brand", "update", "God Morgon", "--review-at", "0.95")
    _assert_one_line_error(code, err, "review_at must not exceed takedown_at")  # the catalog service's rule
    code, _, err = run(capsys, "brand", "add", "../etc")
    _assert_one_line_error(code, err, "invalid brand name")
