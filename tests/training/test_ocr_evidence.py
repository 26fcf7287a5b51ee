"""OCR evidence for calibration claims, read by the real EasyOCR from rendered labels."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from markguard.datasets.manifest import Label, ManifestRow
from markguard.datasets.serials import serial_format
from markguard.training.data import EvalSet, Item
from markguard.training.evaluation import make_claims
from markguard.training.fusion import fit_fusion
from markguard.training.ocr_evidence import add_ocr
from markguard.vision.ocr import shared_ocr_engine
from markguard.vision.scoring import Fusion


def _label(path: Path, lines: list[str]) -> Path:
    image = np.full((240, 640, 3), 255, np.uint8)
    for i, text in enumerate(lines):
        cv2.putText(image, text, (20, 90 + 100 * i), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 5, cv2.LINE_AA)
    cv2.imwrite(str(path), image)
    return path


def _item(path: Path, brand: str, *, serial: str | None, genuine: bool = True) -> Item:
    return Item(path=path, row=ManifestRow(image=path.name, brand=brand, split="val", serial=serial, source="synth",
                                           label=Label.GENUINE if genuine else Label.COUNTERFEIT))


def test_claims_get_wordmark_and_serial_signals(tmp_path: Path) -> None:
    serial = serial_format("Acme").make(np.random.default_rng(0))  # a genuine, registered serial
    photo = _label(tmp_path / "q.png", ["ACME", serial])
    other = _label(tmp_path / "z.png", ["ZENITH"])
    es = EvalSet(name="labels", references=[_item(other, "Zenith", serial=None), _item(other, "Acme", serial=None)],
                 queries=[_item(photo, "Acme", serial=serial)])
    refs = np.eye(2, dtype=np.float32)
    claims = make_claims(es, refs, np.array([[0.0, 1.0]], np.float32))
    cache = tmp_path / "ocr.json"
    add_ocr(claims, es, shared_ocr_engine(), cache=cache, progress=False)
    by_kind = dict(zip(claims.kind, claims.values, strict=True))
    true, other_brand = by_kind["true"], by_kind["other_brand"]
    assert true["wordmark_exact"] == 1.0 and true["other_brand_wordmark"] == 0.0
    assert true["serial_invalid"] == 0.0 and true["serial_unregistered"] == 0.0
    assert other_brand["other_brand_wordmark"] == 1.0 and other_brand["wordmark_exact"] == 0.0
    assert other_brand["serial_invalid"] == 1.0  # Acme's serial is not in Zenith's format
    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and any(line["text"] for line in next(iter(stored.values()))["lines"])


def test_fitted_signals_replace_their_priors_and_constants_keep_them() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    values = [{"genuine_similarity": float(0.8 - 0.3 * t + 0.1 * rng.normal()),
               "serial_invalid": float(t and rng.random() < 0.6), "serial_reuse_sellers": 0.0} for t in y]
    spec, _ = fit_fusion(values, y, match_threshold=0.5)
    assert "serial_invalid" in spec["signals"] and "serial_reuse_sellers" not in spec["signals"]
    assert "serial_invalid" not in spec["priors"] and spec["priors"]["serial_reuse_sellers"] == 1.0
    # a prior beside a fitted weight is ignored; a constant signal keeps its prior
    fusion = Fusion({**spec, "priors": {**spec["priors"], "serial_invalid": 50.0, "serial_reuse_sellers": 2.0}})
    base = {"genuine_similarity": 0.8, "serial_invalid": 1.0}
    risk, signals = fusion.risk(base)
    assert signals["serial_invalid"].contribution == pytest.approx(
        spec["signals"]["serial_invalid"]["weight"] * (1.0 - spec["signals"]["serial_invalid"]["mean"])
        / spec["signals"]["serial_invalid"]["scale"])
    reused, signals = fusion.risk({**base, "serial_reuse_sellers": 1.0})
    assert signals["serial_reuse_sellers"].contribution == 2.0 and reused > risk
