"""What a home trusts of a model: the registry row pins the weights and every settings file, card.json
included, and nothing is parsed, registered or promoted before it is checked. On the shipped model and
real homes, as `test_model_store.py`."""

from __future__ import annotations

import hashlib
import json
import shutil
import types
from pathlib import Path

import pytest
from sqlalchemy import select

from .test_model_store import SHIPPED, _other


def _home(tmp_path: Path, name: str = "home"):  # type: ignore[no-untyped-def]
    from markguard.serving.state.home import Home

    return Home(tmp_path / name)


def _unpin(home, tag: str, *names: str) -> None:  # type: ignore[no-untyped-def]
    """The row as an older markguard wrote it: no pin for `names` (none at all when not given)."""
    from markguard.serving.state.schema import ModelVersion

    with home.sessions.begin() as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == tag))
        pinned = row.card["settings_sha256"]
        kept = {k: v for k, v in pinned.items() if k not in names} if names else None
        row.card = {**{k: v for k, v in row.card.items() if k != "settings_sha256"},
                    **({"settings_sha256": kept} if kept is not None else {})}


def _flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))


# -- 4: register verifies, promote checks before it commits ------------------------------------------------
def test_register_refuses_weights_that_do_not_match_their_config(tmp_path: Path, capsys) -> None:
    from markguard.serving.cli import main
    from markguard.serving.registry import ensure_default_model, list_models, promoted_artifact

    home = _home(tmp_path)
    shipped = ensure_default_model(home)
    bad = _other(tmp_path, "markguard-bad")
    _flip_last_byte(bad / "weights.safetensors")
    assert main(["model", "register", str(bad), "--promote", "--home", str(home.root)]) == 2
    assert "SHA-256" in capsys.readouterr().err
    assert [(r.tag, r.promoted) for r in list_models(home)] == [(shipped.tag, True)]
    assert not (home.models_dir / "markguard-bad").exists()
    assert promoted_artifact(home).tag == shipped.tag
    home.close()


def test_promote_checks_the_model_before_marking_it(tmp_path: Path) -> None:
    from markguard.serving.registry import (
        ensure_default_model,
        list_models,
        promote,
        promoted_artifact,
        register_artifact,
    )
    from markguard.vision.errors import IntegrityError

    home = _home(tmp_path)
    shipped = ensure_default_model(home)
    other = register_artifact(home, _other(tmp_path, "markguard-other-7"))
    _flip_last_byte(other.path / "weights.safetensors")  # the home's copy damaged after registration
    with pytest.raises(IntegrityError, match="SHA-256"):
        promote(home, other.tag, to_store=False)
    assert {r.tag: r.promoted for r in list_models(home)} == {shipped.tag: True, other.tag: False}
    assert promoted_artifact(home).tag == shipped.tag
    home.close()


# -- 5: settings checked as raw bytes against their pin first; a parse error is an IntegrityError ----------
TAMPERED = {
    "fusion_not_json": ("fusion.json", b"{ broken"),
    "embedder_extra_key": ("embedder.json", lambda raw: json.dumps({**json.loads(raw), "x": 1}).encode()),
    "embedder_missing_key": ("embedder.json",
                             lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "head"}).encode()),
    "embedder_list": ("embedder.json", b"[]"),
    "embedder_not_utf8": ("embedder.json", b"\xff\xfe"),
    "card_list": ("card.json", b"[1]"),
}


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "unpinned"])
@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_settings_file_is_refused_and_named(tmp_path: Path, case: str, pinned: bool) -> None:
    from markguard.serving.registry import ensure_default_model, promoted_artifact
    from markguard.vision.errors import IntegrityError

    home = _home(tmp_path)
    artifact = ensure_default_model(home)
    if not pinned:
        _unpin(home, artifact.tag)
    name, new = TAMPERED[case]
    path = artifact.path / name
    path.write_bytes(new(path.read_bytes()) if callable(new) else new)
    expected = f"{name} changed since the model was registered" if pinned else f"{name}: unreadable"
    with pytest.raises(IntegrityError, match=expected):
        promoted_artifact(home)
    with pytest.raises(IntegrityError, match=expected):  # not an UnboundLocalError
        ensure_default_model(home)
    home.close()


# -- 1: card.json is pinned, and its tag must be the row's ---------------------------------------------------
@pytest.mark.parametrize("pin", ["card pinned", "pinned before card.json", "unpinned"])
def test_a_card_naming_another_model_is_refused(tmp_path: Path, pin: str) -> None:
    """T's card edited to name another registered model would make T's embedder search that model's
    index: refused, whether the row pins card.json, pins only the other settings, or pins nothing."""
    from markguard.serving.registry import ensure_default_model, promoted_artifact, register_artifact
    from markguard.vision.errors import IntegrityError

    home = _home(tmp_path)
    artifact = ensure_default_model(home)
    register_artifact(home, _other(tmp_path, "markguard-other-7"))
    if pin == "pinned before card.json":
        _unpin(home, artifact.tag, "card.json")
    elif pin == "unpinned":
        _unpin(home, artifact.tag)
    card = artifact.path / "card.json"
    card.write_text(json.dumps({**json.loads(card.read_text()), "tag": "markguard-other-7"}))
    expected = "card.json changed since" if pin == "card pinned" else "card.json names another model"
    with pytest.raises(IntegrityError, match=expected):
        promoted_artifact(home)
    home.close()


def test_pin_adds_the_card_to_a_pin_taken_before_it(tmp_path: Path, capsys) -> None:
    from markguard.serving.cli import main
    from markguard.serving.registry import ensure_default_model, promoted_artifact
    from markguard.vision.errors import IntegrityError

    home = _home(tmp_path)
    artifact = ensure_default_model(home)
    _unpin(home, artifact.tag, "card.json")
    card = artifact.path / "card.json"
    shipped = card.read_text()
    card.write_text(json.dumps({**json.loads(shipped), "description": "edited"}))
    assert promoted_artifact(home).tag == artifact.tag  # a row pinned before card.json still loads
    card.write_text(shipped)
    args = ["model", "pin", artifact.tag, "--home", str(home.root)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"model": artifact.tag, "pinned": "now"}
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"model": artifact.tag, "pinned": "already"}
    card.write_text(json.dumps({**json.loads(shipped), "description": "edited"}))
    with pytest.raises(IntegrityError, match="card.json changed since the model was registered"):
        promoted_artifact(home)
    home.close()


# -- 3: a models/<tag> folder already in the home is not trusted ---------------------------------------------
def test_install_refuses_a_stale_model_folder_in_the_home(tmp_path: Path) -> None:
    from markguard.serving.registry import install_stored_model, list_models
    from markguard.vision.artifact import load_artifact, settings_digests
    from markguard.vision.errors import IntegrityError

    source = load_artifact(SHIPPED)
    home = _home(tmp_path)
    stale = home.model_dir(source.tag)  # a restored backup, an earlier home: no catalog row names it
    shutil.copytree(SHIPPED, stale)
    fusion = json.loads((stale / "fusion.json").read_text())
    (stale / "fusion.json").write_text(json.dumps({**fusion, "takedown_at": 0.999}))
    with pytest.raises(IntegrityError, match="holds other files"):
        install_stored_model(home, SHIPPED, expected_sha256=source.embedder.weights_sha256,
                             expected_settings=settings_digests(SHIPPED))
    assert list_models(home) == []

    shutil.rmtree(stale)
    shutil.copytree(SHIPPED, stale)  # an identical folder is the same model
    installed = install_stored_model(home, SHIPPED, expected_sha256=source.embedder.weights_sha256,
                                     expected_settings=settings_digests(SHIPPED))
    assert installed.fusion["takedown_at"] == source.fusion["takedown_at"]
    home.close()


# -- 2: weights are hashed and parsed from the same bytes ----------------------------------------------------
def test_weights_swapped_after_the_check_are_not_loaded(tmp_path: Path, monkeypatch) -> None:
    """The file is replaced the moment its checksum is computed (a writer racing the loader): what loads
    is what was hashed."""
    import markguard.vision.weights as weights
    from markguard.vision.artifact import load_artifact

    artifact = load_artifact(SHIPPED)
    path = tmp_path / "weights.safetensors"
    shutil.copyfile(SHIPPED / "weights.safetensors", path)
    original = {k: v.clone() for k, v in weights.load_weights(path, sha256=artifact.embedder.weights_sha256).items()}
    evil = _other(tmp_path, "markguard-evil") / "weights.safetensors"
    _flip_last_byte(evil)

    def racing_sha256(*args):  # type: ignore[no-untyped-def]
        digest = hashlib.sha256(*args)

        class Racing:
            def update(self, data: bytes) -> None:
                digest.update(data)

            def hexdigest(self) -> str:
                shutil.copyfile(evil, path)
                return digest.hexdigest()

        return Racing()

    monkeypatch.setattr(weights, "hashlib", types.SimpleNamespace(sha256=racing_sha256))
    loaded = weights.load_weights(path, sha256=artifact.embedder.weights_sha256)
    assert path.read_bytes() == evil.read_bytes()
    assert loaded.keys() == original.keys()
    assert all(bool((loaded[k] == original[k]).all()) for k in original)


# -- 7: recalibration replaces its output without a moment with no model -------------------------------------
def test_recalibrated_output_is_swapped_in_whole(tmp_path: Path, monkeypatch) -> None:
    import os

    import markguard.training.recalibrate as recalibrate
    from markguard.vision.artifact import load_artifact

    artifact = load_artifact(SHIPPED)
    dest = tmp_path / "out"
    first = recalibrate.write_recalibrated(artifact, dest, fusion=artifact.fusion, card={**artifact.card, "n": 1})
    assert first.card["n"] == 1
    second = recalibrate.write_recalibrated(artifact, dest, fusion=artifact.fusion, card={**artifact.card, "n": 2})
    assert second.card["n"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing left aside

    real = os.replace

    def failing(src, dst):  # type: ignore[no-untyped-def]
        if Path(src).name == ".out.tmp":
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(recalibrate.os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        recalibrate.write_recalibrated(artifact, dest, fusion=artifact.fusion, card={**artifact.card, "n": 3})
    assert load_artifact(dest).card["n"] == 2  # the previous output, whole
