"""`markguard calibrate`: a trained artifact recalibrated without training, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from markguard.serving.cli import main
from markguard.training.card import model_hash
from markguard.training.fusion import THRESHOLDS_NOTE
from markguard.vision.artifact import load_artifact
from markguard.vision.scoring import Fusion
from markguard.vision.signals import SIGNALS


def test_calibrate_writes_a_recalibrated_artifact_with_the_same_weights(tiny_run: Path, tmp_path: Path) -> None:
    old = load_artifact(tiny_run / "artifact")
    out = tmp_path / "recal"
    assert main(["calibrate", "--model", str(old.path), "--out", str(out), "--quiet"]) == 0
    new = load_artifact(out / "artifact")
    assert new.card["derived_from"]["tag"] == old.tag and new.tag != old.tag
    assert new.embedder.weights_sha256 == old.embedder.weights_sha256
    assert new.detector is not None and new.detector.weights_sha256 == old.detector.weights_sha256
    detector = new.load_detector()
    assert new.tag.endswith(model_hash(new.load_embedder().state_dict(), detector=detector.state_dict(),
                                       fusion=new.fusion))
    fusion = Fusion(new.fusion)
    assert set(new.fusion["signals"]) | set(new.fusion["priors"]) == set(SIGNALS)
    assert "priors_note" not in new.fusion["calibration"] and new.fusion["calibration"]["thresholds"] == THRESHOLDS_NOTE
    assert 0 <= fusion.policy.review_at <= fusion.policy.takedown_at <= 1
    assert new.card["calibration_known_fakes"]["copy_claims"] > 0  # the synth val counterfeits were copied
    assert set(new.card["metrics"]) == set(old.card["metrics"])
    assert json.loads((out / "metrics.json").read_text()) == new.card["metrics"]
    # a second run reuses the cached vectors and OCR reads, and calibrates alike
    assert main(["calibrate", "--model", str(old.path), "--out", str(out), "--quiet"]) == 0
    again = load_artifact(out / "artifact")
    assert again.fusion == new.fusion


def test_calibrate_adds_a_mark_verifier_and_weighs_it(tiny_run: Path, tmp_path: Path) -> None:
    """`--verifier DIR` copies the verifier into the new artifact (pinned in its card, in its tag's hash, its
    training card kept) and its calibration claims carry `mark_mismatch`, so the fusion fits or rejects it
    on them (never unweighed)."""
    from markguard.training.recalibrate import VERIFIER_DESCRIPTION
    from markguard.vision.artifact import read_verifier

    candidate = Path(__file__).resolve().parents[2] / "training" / "experiments" / "issue21" / "verifier-t4"
    old = load_artifact(tiny_run / "artifact")
    out = tmp_path / "recal"
    assert main(["calibrate", "--model", str(old.path), "--out", str(out), "--verifier", str(candidate), "--quiet"]) == 0
    new = load_artifact(out / "artifact")
    expected = read_verifier(candidate)
    assert new.verifier is not None and new.verifier.weights_sha256 == expected.config.weights_sha256
    assert new.card["verifier_sha256"] == new.verifier.weights_sha256 and new.card["verifier"]["epoch"] >= 1
    verifier = new.load_verifier()
    assert new.tag.endswith(model_hash(new.load_embedder().state_dict(), detector=new.load_detector().state_dict(),
                                       fusion=new.fusion, verifier=verifier.state_dict()))
    calibration = new.fusion["calibration"]
    assert "mark_mismatch" in calibration["signals"] or \
        calibration["left_out"].get("mark_mismatch", "") != "never varies"  # judged on every claim
    assert "--verifier" in new.card["command"]
    assert new.card["description"].count(VERIFIER_DESCRIPTION) == 1  # the card says what the model now does
