"""import-folder: folders and zips of BRAND/[PRODUCT/]images; bad files, unsafe paths and zip bombs skipped with reasons."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from markguard.datasets.import_folder import IMPORT_LIMITS, ImportOptions, build_import
from markguard.datasets.manifest import Label, read_manifest
from markguard.serving.cli import main


def _image(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((48, 64, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=kind)
    return buf.getvalue()


def _reasons(out: Path) -> dict[str, str]:
    stats = json.loads((out / "stats.json").read_text())
    return {s["path"]: s["reason"] for s in stats["skipped_inputs"]}


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_folder_import_keeps_good_images_and_explains_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _write(src, "Nike/AirMax/one.jpg", _image("JPEG", 1))
    _write(src, "Nike/two.png", _image("PNG", 2))
    _write(src, "counterfeit/Nike/fake.jpg", _image("JPEG", 3))
    _write(src, "Nike/z-copy.png", _image("PNG", 2))  # same bytes as two.png
    _write(src, "Nike/notes.jpg", b"just some text, not a photo")
    _write(src, "Nike/broken.jpg", _image("JPEG", 4)[:300])
    _write(src, "loose.jpg", _image("JPEG", 5))
    _write(src, "Nike/A/B/deep.jpg", _image("JPEG", 6))
    _write(src, "Nike/.DS_Store", b"\x00\x01")
    os.symlink("/etc/hostname", src / "Nike" / "link.jpg")
    out = tmp_path / "out"
    report, stats = build_import(src, out, opts=ImportOptions(seed=0), progress=False)
    rows = read_manifest(out)
    assert {(r.brand, r.product, r.label) for r in rows} == {
        ("Nike", None, Label.GENUINE), ("Nike", None, Label.COUNTERFEIT), ("Nike", "AirMax", Label.GENUINE)}
    reasons = _reasons(out)
    assert "duplicate" in reasons["Nike/z-copy.png"]
    assert "not a JPEG, PNG or WebP" in reasons["Nike/notes.jpg"]
    assert "corrupt" in reasons["Nike/broken.jpg"]
    assert "BRAND folder" in reasons["loose.jpg"]
    assert "too deep" in reasons["Nike/A/B/deep.jpg"]
    assert "hidden" in reasons["Nike/.DS_Store"]
    assert "symbolic link" in reasons["Nike/link.jpg"]
    assert stats["skipped"] == 7


def test_zip_with_unsafe_paths_and_a_bomb(tmp_path: Path) -> None:
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("Adidas/good.jpg"), _image("JPEG", 1))
        zf.writestr(zipfile.ZipInfo("counterfeit/Adidas/Superstar/fake.png"), _image("PNG", 2))
        zf.writestr(zipfile.ZipInfo("../evil.jpg"), _image("JPEG", 3))
        zf.writestr(zipfile.ZipInfo("Adidas/../../evil2.jpg"), _image("JPEG", 4))
        zf.writestr(zipfile.ZipInfo("/abs/evil3.jpg"), _image("JPEG", 5))
        zf.writestr(zipfile.ZipInfo("Adidas\\..\\evil4.jpg"), _image("JPEG", 6))
        zf.writestr(zipfile.ZipInfo("Adidas/notes.jpg"), b"text")
        bomb = zipfile.ZipInfo("Adidas/bomb.jpg")
        bomb.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(bomb, b"\xff\xd8\xff" + bytes(20 * 1024 * 1024))
    out = tmp_path / "nested" / "out"
    build_import(archive, out, opts=ImportOptions(), progress=False)
    rows = read_manifest(out)
    assert {(r.brand, r.product, r.label) for r in rows} == {
        ("Adidas", None, Label.GENUINE), ("Adidas", "Superstar", Label.COUNTERFEIT)}
    reasons = _reasons(out)
    assert "escapes" in reasons["../evil.jpg"]
    assert "escapes" in reasons["Adidas/../../evil2.jpg"]
    assert "absolute" in reasons["/abs/evil3.jpg"]
    assert "backslash" in reasons["Adidas\\..\\evil4.jpg"]
    assert "compression ratio" in reasons["Adidas/bomb.jpg"]
    assert "not a JPEG" in reasons["Adidas/notes.jpg"]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "evil" in p.name]
    assert written == []
    for row in rows:  # stored under their content hash, never under a name from the archive
        assert row.image.startswith("images/") and Path(row.image).stem.isalnum()


def test_zip_over_the_caps_is_refused_whole(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"Brand/{i}.jpg", _image("JPEG", i))
    out = tmp_path / "a"
    report, _ = build_import(archive, out, opts=ImportOptions(limits=dataclasses.replace(IMPORT_LIMITS, max_members=3)), progress=False)
    assert not report.rows and "over the cap" in _reasons(out)[str(archive)]
    report, _ = build_import(archive, tmp_path / "b", opts=ImportOptions(limits=dataclasses.replace(IMPORT_LIMITS, max_total_bytes=1000)), progress=False)
    assert not report.rows and "zip bomb" in _reasons(tmp_path / "b")[str(archive)]


def test_cli_reports_missing_and_not_a_zip_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets", "import-folder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    assert "source missing" in capsys.readouterr().err
    fake = tmp_path / "photos.zip"
    fake.write_bytes(b"this is not a zip")
    assert main(["datasets", "import-folder", str(fake), "--out", str(tmp_path / "b"), "--quiet"]) == 1
    assert "not a readable zip" in capsys.readouterr().err


def test_import_is_byte_reproducible(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for i in range(6):
        _write(src, f"Brand{i % 2}/{i}.jpg", _image("JPEG", i))
    build_import(src, tmp_path / "a", opts=ImportOptions(seed=3), progress=False)
    build_import(src, tmp_path / "b", opts=ImportOptions(seed=3), progress=False)
    for name in ("manifest.jsonl", "contact_sheet.png", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
