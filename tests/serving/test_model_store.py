"""The BentoML model store as the way a model reaches the service: promotion saves it there, the service
declares it by tag, and installing it into a home checks every weight file's SHA-256."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"


def _other(tmp_path: Path, tag: str) -> Path:
    other = tmp_path / tag
    shutil.copytree(SHIPPED, other)
    card = json.loads((other / "card.json").read_text())
    card["tag"] = tag
    (other / "card.json").write_text(json.dumps(card))
    return other


def test_promotion_stores_the_model_and_the_service_declares_it(tmp_path: Path, monkeypatch) -> None:
    import bentoml
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    from markguard.serving.registry import (
        bento_model_tag,
        ensure_default_model,
        home_model_store,
        install_stored_model,
        promoted_artifact,
        register_artifact,
        served_model_tag,
    )
    from markguard.serving.state.home import Home
    from markguard.vision.errors import IntegrityError

    monkeypatch.delenv("BENTOML_HOME", raising=False)
    home = Home(tmp_path / "home")
    shipped = ensure_default_model(home)
    other = register_artifact(home, _other(tmp_path, "markguard-other-7"), promote_it=True)
    store = home_model_store(home)  # HOME/bentoml: what `markguard serve` points BentoML at
    assert {str(m.tag) for m in store.list("markguard")} == {bento_model_tag(shipped.tag), "markguard:other-7"}

    # the service declares the home's promoted model, read from BentoML's current store
    original = BentoMLContainer.model_store.get()
    BentoMLContainer.model_store.set(ModelStore(tmp_path / "home" / "bentoml" / "models"))
    try:
        assert served_model_tag(home.root) == "markguard:other-7"
        assert served_model_tag(tmp_path / "no-home") == bento_model_tag(shipped.tag)  # the shipped default
        assert not (tmp_path / "no-home").exists()
        stored = bentoml.models.get("markguard:other-7")
    finally:
        BentoMLContainer.model_store.set(original)

    fresh = Home(tmp_path / "fresh")
    assert install_stored_model(fresh, stored.path, expected_sha256=stored.info.metadata["weights_sha256"]).tag == \
        other.tag
    assert promoted_artifact(fresh).tag == other.tag

    tampered = tmp_path / "tampered"
    shutil.copytree(stored.path, tampered)
    raw = bytearray((tampered / "weights.safetensors").read_bytes())
    raw[-1] ^= 1
    (tampered / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="SHA-256"):
        install_stored_model(Home(tmp_path / "fresh2"), tampered)
    with pytest.raises(IntegrityError, match="model store recorded"):
        install_stored_model(Home(tmp_path / "fresh3"), stored.path, expected_sha256="0" * 64)

    # the store also pins the settings: a lowered takedown threshold in a stored copy is refused
    edited = tmp_path / "edited"
    shutil.copytree(stored.path, edited)
    fusion = json.loads((edited / "fusion.json").read_text())
    fusion["takedown_at"] = 0.5
    (edited / "fusion.json").write_text(json.dumps(fusion))
    with pytest.raises(IntegrityError, match="fusion.json differ from what the model store recorded"):
        install_stored_model(Home(tmp_path / "fresh4"), edited,
                             expected_settings=stored.info.metadata["settings_sha256"])
    home.close()
    fresh.close()


@pytest.mark.parametrize(("name", "key", "value"), [("verifier.json", "min_reference_iou", 0.0),
                                                     ("detector.json", "min_score", 0.5),
                                                     ("fusion.json", "takedown_at", 0.5)])
def test_an_edited_setting_of_a_registered_model_is_refused(tmp_path: Path, name: str, key: str, value: float) -> None:
    """The weights are pinned by their SHA-256; so are the settings beside them. Turning the mark
    verifier's reference gate off, the detector's threshold up or the takedown threshold down in the
    home's copy of a registered model changes its scores without touching a weight: it is caught before
    the model loads, and the file is named."""
    from markguard.serving.registry import ensure_default_model, promoted_artifact
    from markguard.serving.state.home import Home
    from markguard.vision.errors import IntegrityError

    home = Home(tmp_path / "home")
    artifact = ensure_default_model(home)
    assert promoted_artifact(home).tag == artifact.tag
    settings = json.loads((artifact.path / name).read_text())
    assert key in settings and settings[key] != value
    settings[key] = value
    (artifact.path / name).write_text(json.dumps(settings))
    with pytest.raises(IntegrityError, match=f"{name} changed since the model was registered"):
        promoted_artifact(home)
    home.close()


def test_a_model_registered_before_the_pin_is_pinned_by_an_operator(tmp_path: Path, capsys) -> None:
    """A row registered before registration pinned the settings has no pin, so nothing is checked.
    `markguard model pin TAG` pins the files as they are; from then on an edit is refused, and neither
    a second pin nor a pin of the edited files lifts that."""
    from sqlalchemy import select

    from markguard.serving.cli import main
    from markguard.serving.registry import ensure_default_model, promoted_artifact
    from markguard.serving.state.home import Home
    from markguard.serving.state.schema import ModelVersion
    from markguard.vision.errors import IntegrityError

    home = Home(tmp_path / "home")
    artifact = ensure_default_model(home)
    with home.sessions.begin() as session:  # as a row of an older markguard holds it
        row = session.scalar(select(ModelVersion).where(ModelVersion.tag == artifact.tag))
        row.card = {k: v for k, v in row.card.items() if k != "settings_sha256"}
    fusion = artifact.path / "fusion.json"
    shipped = fusion.read_text()
    fusion.write_text(json.dumps({**json.loads(shipped), "takedown_at": 0.5}))
    assert promoted_artifact(home).tag == artifact.tag  # unpinned: the edit goes unseen
    fusion.write_text(shipped)  # the operator checks the files (here: restores them), then pins
    args = ["model", "pin", artifact.tag, "--home", str(home.root)]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"model": artifact.tag, "pinned": "now"}
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {"model": artifact.tag, "pinned": "already"}
    fusion.write_text(json.dumps({**json.loads(shipped), "takedown_at": 0.5}))
    with pytest.raises(IntegrityError, match="fusion.json changed since the model was registered"):
        promoted_artifact(home)
    assert main(args) == 2  # not re-pinned over the edit
    assert "fusion.json changed" in capsys.readouterr().err
    assert main(["model", "pin", "nosuchtag", "--home", str(home.root)]) == 2
    home.close()
