"""The OCR gate (vision.pipeline.OcrGate) through the real model, index and EasyOCR: text is read only
where it can matter, and where it is read it decides as the full path does."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from markguard.serving.brands import add_brand, get_brand
from markguard.serving.engine import ScoreRequest, ScoringEngine
from markguard.serving.enroll import collect_inputs, enroll
from markguard.serving.registry import ensure_default_model
from markguard.serving.state.home import Home
from markguard.vision.pipeline import BrandProfile, OcrGate
from markguard.vision.scoring import Fusion, Policy
from markguard.vision.signals import signal_names


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


def _fusion() -> Fusion:
    """A logistic fusion of the test's own: one fitted signal, and priors for every other (wordmarks:
    an exact own reading -0.5 log-odds, a misspelt one +2.5, another brand's +1)."""
    priors = {name: 0.0 for name in signal_names() if name != "genuine_similarity"}
    priors |= {"wordmark_exact": -0.5, "wordmark_near_miss": 2.5, "other_brand_wordmark": 1.0}
    return Fusion({"kind": "logistic", "bias": 0.0, "review_at": 0.5, "takedown_at": 0.9, "match_threshold": 0.3,
                   "signals": {"genuine_similarity": {"mean": 0.0, "scale": 1.0, "weight": -1.0}}, "priors": priors})


def test_the_gate_reads_serial_brands_and_probes_where_a_wordmark_can_move_the_decision() -> None:
    fusion, policy = _fusion(), Policy(review_at=0.5, takedown_at=0.9)
    plain = BrandProfile(id=1, name="Arla")
    at = lambda logit: {"genuine_similarity": -logit}  # noqa: E731 - the risk's log-odds without OCR
    gate = OcrGate()
    assert gate.action(BrandProfile(id=2, name="Valio", serial_pattern=r"VL\d{8}"), at(-9), fusion, policy) == "read"
    assert gate.action(BrandProfile(id=2, name="Valio", serial_checksum="luhn"), at(9), fusion, policy) == "read"
    assert gate.action(None, at(-9), fusion, policy) == "read"  # an unclaimed photo: its text may name the brand
    assert gate.action(plain, at(-2.4), fusion, policy) == "probe"  # a misspelt wordmark lifts it to review
    assert gate.action(plain, at(0.3), fusion, policy) == "probe"  # a spelt one drops it to pass
    assert gate.action(plain, at(-2.6), fusion, policy) == "skip"  # no reading of its own mark reaches review
    assert gate.action(plain, at(5), fusion, policy) == "skip"  # takedown whatever is read
    assert OcrGate(outcomes="all").action(plain, at(-2.6), fusion, policy) == "probe"  # +2.5 +1 reaches it
    assert OcrGate(probe=False).action(plain, at(-2.4), fusion, policy) == "read"
    # the brand's own thresholds
    assert gate.action(plain, at(-2.6), fusion, Policy(review_at=0.1, takedown_at=0.6)) == "probe"


def test_the_gate_checks_geometry_only_where_some_outcome_moves_the_decision() -> None:
    """Geometry's corners (none checked; 0 or every keypoint an inlier, ratio 0 or 1), with or without a
    wordmark reading: skipped only where none of them crosses a threshold."""
    fusion = Fusion(_fusion().spec | {"signals": {
        "genuine_similarity": {"mean": 0.0, "scale": 1.0, "weight": -1.0},
        "inlier_ratio": {"mean": 0.0, "scale": 1.0, "weight": -2.0}}})  # a ratio of 1: -2 log-odds
    policy, plain = Policy(review_at=0.5, takedown_at=0.9), BrandProfile(id=1, name="Arla")
    at = lambda logit: {"genuine_similarity": -logit}  # noqa: E731 - the risk's log-odds without OCR or geometry
    gate = OcrGate()
    assert not gate.needs_geometry(plain, at(9), fusion, policy)  # takedown whatever the shape and the text
    assert not gate.needs_geometry(plain, at(-9), fusion, policy)  # pass whatever
    assert gate.needs_geometry(plain, at(1), fusion, policy)  # a good shape match drops it to pass
    assert gate.needs_geometry(plain, at(-2.4), fusion, policy)  # a misspelt wordmark lifts it to review
    assert gate.needs_geometry(plain, at(4.5), fusion, policy)  # -2 (and -0.5 spelt) leaves takedown
    assert not gate.needs_geometry(plain, at(5), fusion, policy)  # 5 - 2.5 = 2.5 > logit(0.9) = 2.2
    assert gate.needs_geometry(BrandProfile(id=2, name="Valio", serial_pattern=r"VL\d{8}"), at(9), fusion, policy)
    assert gate.needs_geometry(None, at(9), fusion, policy)
    assert OcrGate(geometry=False).needs_geometry(plain, at(9), fusion, policy)


def test_ocr_is_skipped_where_the_embedding_is_decisive(home) -> None:
    """A brand without serial rules, its own enrolled photo: the risk without OCR is far from the
    thresholds, so the gated path reads nothing and decides as the full path does."""
    home, _, arla_photo = home
    reads: list[float] = []
    gated = ScoringEngine(home, ocr_gate=OcrGate(), ocr_budget_ms=60_000, on_ocr_seconds=reads.append)
    request = ScoreRequest(arla_photo.read_bytes(), brand="Arla", product="Arla-Standard-Milk")
    result = gated.score(request, record=False)
    assert reads == [] and result.ocr.lines == ()
    assert gated.scorer.ocr_runs == [0, 1, 0]
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
    assert len(reads) == 1 and gated.scorer.ocr_runs == [1, 1, 0]
    assert result.signals["serial_invalid"].value == 1.0
    assert result.decision != without.decision, (result.risk, without.risk)
    full = ScoringEngine(home, ocr_budget_ms=60_000).score(request, record=False)
    assert result.decision == full.decision
    assert abs(np.log(result.risk / (1 - result.risk)) - np.log(without.risk / (1 - without.risk))) > 3.0


def test_a_probe_that_reads_a_misspelt_wordmark_leads_to_the_full_read(home) -> None:
    """A brand without serial rules whose review threshold sits where a misspelt wordmark (the fusion's
    own shift, from fusion.json) crosses it: the gate probes, the probe sees the wordmark, the full read
    follows, and the decision is the full path's."""
    home, _, arla_photo = home
    with home.sessions.begin() as session:
        add_brand(session, "Oatly", wordmarks=["OATLY"])
    oatly = ScoreRequest(_label(arla_photo, "OATLLY", "fresh milk"), brand="Oatly")
    without = ScoringEngine(home, ocr=False).score(oatly, record=False)
    fusion = ScoringEngine(home, ocr=False).fusion
    values = {name: signal.value for name, signal in without.signals.items()}
    with_miss = fusion.risk({**values, "wordmark_exact": 0.0, "wordmark_near_miss": 1.0,
                             "other_brand_wordmark": 0.0})[0]
    assert with_miss > without.risk
    with home.sessions.begin() as session:  # review between the two: only the misspelt reading reaches it
        brand = get_brand(session, "Oatly")
        brand.review_at, brand.takedown_at = (without.risk + with_miss) / 2, max(0.999, with_miss)
    gated = ScoringEngine(home, ocr_gate=OcrGate(), ocr_budget_ms=60_000, runtime="onnx")
    result = gated.score(oatly, record=False)
    assert gated.scorer.ocr_runs[2] == 1  # probed
    full = ScoringEngine(home, ocr_budget_ms=60_000).score(oatly, record=False)
    assert any(w.match.value == "near_miss" for w in full.ocr.wordmarks)
    assert gated.scorer.ocr_runs[0] == 1 and result.decision == full.decision and abs(result.risk - full.risk) < 1e-3
    assert result.decision != without.decision
