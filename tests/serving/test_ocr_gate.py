"""The OCR gate (vision.pipeline.OcrGate) through the real model, index and EasyOCR: text is read only
where it can matter, and where it is read it decides as the full path does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from markguard.serving.brands import add_brand
from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.enroll import collect_inputs, enroll
from markguard.serving.registry import ensure_default_model
from markguard.serving.state.home import Home
from markguard.vision.pipeline import BrandProfile, OcrGate
from markguard.vision.scoring import Policy


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, grocery: Path) -> tuple[Home, Path, Path]:
    home = Home(tmp_path_factory.mktemp("gate-home"))
    with home.sessions.begin() as session:
        valio = add_brand(session, "Valio", wordmarks=["VALIO"])
        valio.serial_pattern, valio.serial_checksum = r"VL\d{8}", "luhn"
        valio.review_at, valio.takedown_at = 0.2, 0.9  # a strict brand: what OCR adds turns pass into review
        add_brand(session, "Arla")
    artifact = ensure_default_model(home)
    model = artifact.load_embedder()
    valio_photo = next((grocery / "iconic" / "Packages").glob("*/Valio-*/*_Iconic.jpg"))
    arla_photo = next((grocery / "iconic" / "Packages").glob("*/Arla-Standard-Milk/*_Iconic.jpg"))
    enroll(home, artifact, model, brand="Valio", inputs=collect_inputs([valio_photo]))
    enroll(home, artifact, model, brand="Arla", product="Arla-Standard-Milk", inputs=collect_inputs([arla_photo]))
    return home, valio_photo, arla_photo


def _label(photo: Path, text: str, serial: str) -> bytes:
    img = Image.open(photo).convert("RGB").resize((600, 600))
    font = ImageFont.truetype("DejaVuSans-Bold.ttf", 48)
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 420, 560, 580), fill="white")
    draw.text((60, 430), text, fill="black", font=font)
    draw.text((60, 500), serial, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_the_gate_reads_serial_brands_and_the_contested_band_only() -> None:
    gate, policy = OcrGate(below=0.1, above=0.02), Policy(review_at=0.8, takedown_at=0.88)
    plain = BrandProfile(id=1, name="Arla")
    assert gate.needs_ocr(BrandProfile(id=2, name="Valio", serial_pattern=r"VL\d{8}"), 0.01, policy)
    assert gate.needs_ocr(BrandProfile(id=2, name="Valio", serial_checksum="luhn"), 0.99, policy)
    assert gate.needs_ocr(None, 0.01, policy)  # an unclaimed photo: its text may name the brand
    assert gate.needs_ocr(plain, 0.71, policy) and gate.needs_ocr(plain, 0.89, policy)
    assert not gate.needs_ocr(plain, 0.69, policy) and not gate.needs_ocr(plain, 0.91, policy)
    assert gate.needs_ocr(plain, 0.3, Policy(review_at=0.35, takedown_at=0.6))  # the brand's own thresholds


def test_ocr_is_skipped_where_the_embedding_is_decisive(home) -> None:
    """A brand without serial rules, its own enrolled photo: the risk without OCR is far from the
    thresholds, so the gated path reads nothing and decides as the full path does."""
    home, _, arla_photo = home
    reads: list[float] = []
    gated = ScoringEngine(home, ocr_gate=OcrGate(), ocr_budget_ms=60_000, on_ocr_seconds=reads.append)
    request = ScoreRequest(arla_photo.read_bytes(), brand="Arla", product="Arla-Standard-Milk")
    result = gated.score(request, record=False)
    assert reads == [] and result.ocr.lines == ()
    assert gated.scorer.ocr_runs == [0, 1]
    full = ScoringEngine(home, ocr_budget_ms=60_000).score(request, record=False)
    assert full.ocr.lines  # the full path did read text on it ...
    assert result.decision == full.decision  # ... which changed nothing


def test_ocr_runs_where_it_changes_the_decision(home) -> None:
    """A serial brand's photo with a misspelt wordmark and a serial failing its check digit: the gate
    must read it, and the reading turns the decision the embedding alone would give."""
    home, valio_photo, _ = home
    reads: list[float] = []
    request = ScoreRequest(_label(valio_photo, "VALJO", "VL12345675"), brand="Valio")
    gated = ScoringEngine(home, ocr_gate=OcrGate(), ocr_budget_ms=60_000, on_ocr_seconds=reads.append,
                          runtime="onnx")
    result = gated.score(request, record=False)
    without = ScoringEngine(home, ocr=False).score(request, record=False)
    assert len(reads) == 1 and gated.scorer.ocr_runs == [1, 1]
    assert result.signals["serial_invalid"].value == 1.0
    assert result.decision != without.decision, (result.risk, without.risk)
    full = ScoringEngine(home, ocr_budget_ms=60_000).score(request, record=False)
    assert result.decision == full.decision
    assert abs(np.log(result.risk / (1 - result.risk)) - np.log(without.risk / (1 - without.risk))) > 3.0
