"""Synthetic listing photos: valid manifests, brand-disjoint splits, byte-reproducible builds, bad input skipped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from markguard.datasets.build import BuildRefused
from markguard.datasets.manifest import Label, read_manifest
from markguard.datasets.serials import serial_format
from markguard.datasets.splits import split_for
from markguard.datasets.synth import SynthOptions, build_synth
from markguard.serving.cli import main
from markguard.vision.decode import read_image

SMALL = SynthOptions(brands=6, per_brand=2, counterfeits_per_genuine=2, size=128, serial_rate=0.5,
                     val_fraction=0.34, test_fraction=0.33, seed=5)


def _tiny_data_root(tmp: Path, shared: Path) -> Path:
    """A data root with two real clothing photos and one corrupt one."""
    root = tmp / "data"
    folder = root / "clothing" / "train" / "t-shirt"
    folder.mkdir(parents=True)
    photos = sorted((shared / "clothing" / "train" / "t-shirt").glob("*.jpg"))[:2]
    for p in photos:
        shutil.copy(p, folder / p.name)
    (folder / "zz-corrupt.jpg").write_bytes(photos[0].read_bytes()[:2000])
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory, grocery: Path) -> Path:
    shared = grocery.parent
    if not (shared / "clothing").is_dir():
        pytest.skip("shared clothing data missing")
    return _tiny_data_root(tmp_path_factory.mktemp("synth-data"), shared)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    build_synth(out, data_root=data_root, opts=SMALL, progress=False)
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_is_valid_and_complete(built: Path) -> None:
    rows = read_manifest(built)
    assert len(rows) == 6 * 2 * 3
    assert {r.label for r in rows} == {Label.GENUINE, Label.COUNTERFEIT}
    for row in rows:
        image = read_image(built / row.image)
        assert image.shape == (128, 128, 3)
        kinds = [b.kind for b in row.boxes]
        assert kinds[0] == "mark"
        for box in row.boxes:
            assert 0 <= box.x0 < box.x1 <= 128 and 0 <= box.y0 < box.y1 <= 128
        assert ("label" in kinds) == (row.serial is not None)
        if row.label is Label.COUNTERFEIT:
            assert row.transform and row.strength is not None and 0.3 <= row.strength <= 1.0
        else:
            assert row.transform is None
            if row.serial:
                assert serial_format(row.brand).check(row.serial), row.serial
    assert (built / "contact_sheet.png").stat().st_size > 10_000
    assert read_image(built / "contact_sheet.png").shape[0] > 300


def test_splits_are_brand_disjoint(built: Path) -> None:
    by_split: dict[str, set[str]] = {}
    for row in read_manifest(built):
        by_split.setdefault(row.split, set()).add(row.brand)
    assert len(by_split) >= 2
    names = sorted(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not by_split[a] & by_split[b], (a, b)
    for brand in [f"Brand {i}" for i in range(200)]:
        assert split_for(brand, seed=1) == split_for(brand, seed=1)


def test_same_seed_same_bytes_any_worker_count(built: Path, data_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "b"
    build_synth(again, data_root=data_root, opts=SMALL, workers=2, progress=False)
    assert _files(again) == _files(built)
    other = tmp_path / "c"
    build_synth(other, data_root=data_root, opts=SynthOptions(**{**SMALL.__dict__, "seed": 6}), progress=False)
    assert (other / "manifest.jsonl").read_bytes() != (built / "manifest.jsonl").read_bytes()


def test_a_test_only_build_holds_the_full_builds_test_photos(built: Path, data_root: Path, tmp_path: Path) -> None:
    """`--splits test` builds a larger held-out set without the training photos: the same brands' photos,
    byte for byte, as in a full build, and nothing of the other splits."""
    only = tmp_path / "test-only"
    build_synth(only, data_root=data_root, opts=SynthOptions(**{**SMALL.__dict__, "splits": ("test",)}), progress=False)
    rows = read_manifest(only)
    full_test = [r for r in read_manifest(built) if r.split == "test"]
    assert rows and {r.split for r in rows} == {"test"}
    assert [r.image for r in rows] == [r.image for r in full_test]
    assert all((only / r.image).read_bytes() == (built / r.image).read_bytes() for r in rows)
    assert "splits" not in json.loads((built / "build.json").read_text())["options"]  # full builds: as before
    with pytest.raises(SystemExit):
        main(["datasets", "synth", "--out", str(tmp_path / "x"), "--splits", "holdout"])
    # a selection that holds no brand is refused before anything is written, not an empty held-out set:
    # with one brand (the build's first, by the seed's order) every other split is empty
    other = next(s for s in ("train", "val", "test") if s != read_manifest(built)[0].split)
    with pytest.raises(BuildRefused, match="falls in splits"):
        build_synth(tmp_path / "none", data_root=data_root, progress=False,
                    opts=SynthOptions(**{**SMALL.__dict__, "brands": 1, "splits": (other,)}))
    assert not (tmp_path / "none").exists()


def test_paired_scenes_photograph_training_counterfeits_in_their_genuine_scene(built: Path, data_root: Path,
                                                                              tmp_path: Path) -> None:
    paired = tmp_path / "paired"
    build_synth(paired, data_root=data_root, opts=SynthOptions(**{**SMALL.__dict__, "paired_scenes": True}),
                progress=False)
    rows, plain = read_manifest(paired), read_manifest(built)
    assert [r.image for r in rows] == [r.image for r in plain]
    for a, b in zip(rows, plain, strict=True):  # evaluation photos draw their own scenes, byte for byte
        assert (a.split == "train") or (paired / a.image).read_bytes() == (built / b.image).read_bytes()

    def background_difference(folder: Path, split_rows: list) -> list[float]:
        """Mean pixel difference between each genuine photo and its counterfeit, away from both marks."""
        out = []
        for genuine in (r for r in split_rows if r.label is Label.GENUINE):
            fake = next(r for r in split_rows if r.image == genuine.image.replace("_genuine", "_cf0"))
            x, y = read_image(folder / genuine.image).astype(float), read_image(folder / fake.image).astype(float)
            keep = np.ones(x.shape[:2], bool)
            for box in (*genuine.boxes, *fake.boxes):
                keep[box.y0 : box.y1, box.x0 : box.x1] = False
            out.append(float(np.abs(x - y)[keep].mean()))
        return out

    train = [r for r in rows if r.split == "train"]
    assert train, "SMALL must have training brands"
    same_scene = background_difference(paired, train)
    own_scene = background_difference(built, [r for r in plain if r.split == "train"])
    assert np.median(same_scene) < 8 < np.median(own_scene)
    assert json.loads((paired / "build.json").read_text())["options"]["paired_scenes"] is True


def test_corrupt_surface_photo_is_skipped_with_a_reason(built: Path) -> None:
    stats = json.loads((built / "stats.json").read_text())
    reasons = [s for s in stats["skipped_inputs"] if s["path"].endswith("zz-corrupt.jpg")]
    assert reasons and "corrupt" in reasons[0]["reason"]


def test_output_holding_another_build_is_refused_unless_forced(built: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "d"
    shutil.copytree(built, out)
    other = SynthOptions(**{**SMALL.__dict__, "brands": 2, "per_brand": 1})
    with pytest.raises(BuildRefused, match="different build"):
        build_synth(out, data_root=data_root, opts=other, progress=False)
    build_synth(out, data_root=data_root, opts=other, force=True, progress=False)
    assert len(read_manifest(out)) == 2 * 1 * 3
    assert len(list((out / "images").rglob("*.jpg"))) == 6  # the old build's images went with it


def test_cli_refuses_a_foreign_folder(tmp_path: Path, data_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    argv = ["datasets", "synth", "--out", str(out), "--brands", "1", "--per-brand", "1", "--size", "96",
            "--source", str(data_root), "--quiet"]
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert len(read_manifest(out)) == 2


def test_serial_formats_are_brand_specific() -> None:
    rng = np.random.default_rng(0)
    fmt = serial_format("Tropicana")
    assert fmt == serial_format("Tropicana")
    good = fmt.make(rng)
    assert fmt.check(good)
    assert not fmt.check(fmt.make(rng, valid=False))
    assert {serial_format(b) for b in ["Nike", "Adidas", "Puma", "Arla", "Valio"]}.__len__() > 1
