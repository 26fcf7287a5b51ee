"""Bad input on the way in costs one file, never the whole enroll, score or rebuild: file names that are not
UTF-8, text arguments that the catalog cannot store, a file over the byte limit, a corrupt blob; and an
upload neither holds the write lock while it embeds nor brings more images than the cap."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from markguard.serving.cli import main
from markguard.vision.decode import MAX_BYTES

from .hostile import call, small_jpeg


def _photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _run(capsys, *argv: str) -> tuple[int, list[dict], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines() if line.strip()], err


@dataclasses.dataclass
class Enrolling:
    home: object  # serving.state.home.Home
    artifact: object
    model: object


@pytest.fixture()
def arla(home_dir: Path) -> Enrolling:
    from markguard.serving.brands import add_brand
    from markguard.serving.registry import ensure_default_model
    from markguard.serving.state.home import Home

    home = Home(home_dir)
    with home.sessions.begin() as session:
        add_brand(session, "Arla")
    artifact = ensure_default_model(home)
    yield Enrolling(home, artifact, artifact.load_embedder())
    home.close()


# -- names and text that are not UTF-8 --------------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_enrolled_as_valid_text(home_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "latin"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), "wb") as fh:  # Latin-1 bytes, not UTF-8
        fh.write(_photo(1))
    assert _run(capsys, "brand", "add", "Arla")[0] == 0
    code, out, err = _run(capsys, "enroll", "Arla", str(folder))
    assert code == 0 and out[0]["added"] == 1, err
    _, refs, _ = _run(capsys, "reference", "list", "Arla")
    assert [r["source"] for r in refs] == ["caf\ufffd.jpg"]


def test_public_label_is_valid_text() -> None:
    from markguard.serving.enroll import public_label

    assert public_label("/srv/in/caf\udce9.jpg") == "caf\ufffd.jpg"
    assert public_label("/srv/refs.zip!a/caf\udce9.jpg") == "refs.zip!a/caf\ufffd.jpg"
    assert public_label("/srv/in/café.jpg") == "café.jpg"  # valid text kept as it is


@pytest.mark.parametrize("option", ["--listing", "--seller", "--title", "--brand", "--product"])
@pytest.mark.parametrize(("value", "reason"), [("L\udce9", "not valid UTF-8"), ("a\0b", "NUL")])
def test_score_refuses_text_arguments_the_catalog_cannot_store(option: str, value: str, reason: str, capsys) -> None:
    extra = ["--brand", "Arla"] if option == "--product" else []
    with pytest.raises(SystemExit) as exited:
        main(["score", "photo.jpg", *extra, option, value])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and reason in err


@pytest.mark.parametrize("command", [["enroll", "Arla", "refs", "--product"], ["brand", "add", "Zeta", "--wordmark"],
                                     ["brand", "update", "Arla", "--wordmark"]])
def test_catalog_commands_refuse_text_arguments_the_catalog_cannot_store(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "P\udce9"])
    assert exited.value.code == 2
    assert f"argument {command[-1]}: is not valid UTF-8 text" in capsys.readouterr().err


def test_score_reports_a_path_holding_nul_and_prints_the_photo_before_it(
        home_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(_photo(2))
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{good}\n{tmp_path}/r\0gb.jpg\n"))
    code, results, err = _run(capsys, "score", "-", "--no-ocr", "--no-record")
    assert code == 2
    assert [r["image"] for r in results] == [str(good)]
    assert "NUL" in err and "Traceback" not in err


def test_import_folder_stores_a_name_that_is_not_utf8_as_valid_text(tmp_path: Path) -> None:
    from markguard.datasets.import_folder import ImportOptions, build_import
    from markguard.datasets.manifest import read_manifest

    folder = os.path.join(os.fsencode(tmp_path), b"src", b"Arla", b"Lait-\xe9cr\xe9m\xe9")
    os.makedirs(folder)
    with open(os.path.join(folder, b"caf\xe9.jpg"), "wb") as fh:
        fh.write(_photo(3))
    out = tmp_path / "out"
    build_import(tmp_path / "src", out, opts=ImportOptions(), progress=False)
    (row,) = read_manifest(out)
    assert row.product == "Lait-\ufffdcr\ufffdm\ufffd"
    assert row.source == "import:Arla/Lait-\ufffdcr\ufffdm\ufffd/caf\ufffd.jpg"


# -- a file over the byte limit ---------------------------------------------------------------------------
def test_skip_bad_skips_a_file_over_the_byte_limit(home_dir: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(_photo(4))
    with open(folder / "huge.jpg", "wb") as fh:  # sparse: MAX_BYTES + 1 bytes on no disk
        fh.truncate(MAX_BYTES + 1)
    assert _run(capsys, "brand", "add", "Arla")[0] == 0
    code, _, err = _run(capsys, "enroll", "Arla", str(folder))
    assert code == 2 and f"huge.jpg: {MAX_BYTES + 1} bytes exceeds" in err
    assert _run(capsys, "reference", "list", "Arla")[1] == []  # the whole enroll refused: nothing added
    code, out, err = _run(capsys, "enroll", "Arla", str(folder), "--skip-bad")
    assert code == 0, err
    assert out[0]["added"] == 1 and out[0]["skipped"] == 1
    assert f"skipped {folder / 'huge.jpg'}: {MAX_BYTES + 1} bytes exceeds the {MAX_BYTES}-byte limit" in err


# -- a corrupt blob when the index is rebuilt ---------------------------------------------------------------
def test_a_corrupt_blob_is_left_out_of_a_rebuilt_index(arla: Enrolling, home_dir: Path, tmp_path: Path,
                                                       capsys, caplog) -> None:
    from markguard.serving.enroll import InputImage, enroll

    report = enroll(arla.home, arla.artifact, arla.model, brand="Arla",
                    inputs=[InputImage("a.jpg", _photo(5)), InputImage("b.jpg", _photo(6))])
    good, bad = report.added
    shutil.rmtree(arla.home.index_dir(arla.artifact.tag))
    with arla.home.sessions() as session:
        from markguard.serving.state.schema import Reference

        blob = arla.home.blob_path(session.get(Reference, bad).sha256)
    blob.write_bytes(blob.read_bytes()[:1000])  # truncated: its hash no longer matches
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(_photo(5))
    code, results, err = _run(capsys, "score", str(photo), "--brand", "Arla", "--no-ocr", "--no-record")
    assert code == 0, err
    assert {m["reference_id"] for m in results[0]["matches"]} == {good}
    assert any(r.levelname == "ERROR" and "left out of the index" in r.message for r in caplog.records)


# -- the write lock and the image cap of an upload --------------------------------------------------------
def test_enroll_embeds_before_it_takes_the_write_lock(arla: Enrolling, monkeypatch) -> None:
    from markguard.serving import enroll as enroll_module
    from markguard.serving.enroll import InputImage, enroll

    embed = enroll_module.embed_images
    lock_free = []

    def embed_and_look(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        with arla.home.write_lock(timeout_s=0) as held:  # another writer's try, while this one embeds
            lock_free.append(held)
        return embed(*args, **kwargs)

    monkeypatch.setattr(enroll_module, "embed_images", embed_and_look)
    report = enroll(arla.home, arla.artifact, arla.model, brand="Arla", inputs=[InputImage("a.jpg", _photo(7))])
    assert len(report.added) == 1 and lock_free == [True]


def test_an_image_enrolled_by_another_writer_while_embedding_is_a_duplicate(arla: Enrolling, monkeypatch) -> None:
    from markguard.serving import enroll as enroll_module
    from markguard.serving.enroll import InputImage, enroll

    embed = enroll_module.embed_images
    shared, own = InputImage("shared.jpg", _photo(8)), InputImage("own.jpg", _photo(9))
    calls = []

    def embed_while_another_enrolls(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 1:  # the other writer commits the shared image between this embedding and the lock
            assert len(enroll(arla.home, arla.artifact, arla.model, brand="Arla", inputs=[shared]).added) == 1
        return embed(*args, **kwargs)

    monkeypatch.setattr(enroll_module, "embed_images", embed_while_another_enrolls)
    report = enroll(arla.home, arla.artifact, arla.model, brand="Arla", inputs=[shared, own])
    assert report.duplicates == ["shared.jpg"] and len(report.added) == 1
    from markguard.serving.catalog import Catalog

    assert sorted(r.source for r in Catalog(arla.home).references("Arla")) == ["own.jpg", "shared.jpg"]


def test_an_upload_over_the_image_cap_is_413_before_anything_is_decoded(attack_client, attack_home, monkeypatch):
    from markguard.serving.caps import CAPS
    from markguard.serving.routes import references

    def never(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("enrolled")

    monkeypatch.setattr(references, "enroll", never)
    assert CAPS.upload_images == 500  # the documented default (SECURITY.md)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(CAPS.upload_images + 1):
            zf.writestr(f"refs/{i}.jpg", small_jpeg(i, size=8))
    r = call(attack_client, "POST", "/v1/brands/Arla/references", attack_home.keys["arla"],
             files={"files": ("refs.zip", buf.getvalue())})
    assert r.status_code == 413 and r.json()["code"] == "over_budget", r.text
    assert f"over the cap of {CAPS.upload_images} images per upload" in r.json()["detail"]
