"""vision.ocr: the real EasyOCR (offline, checksummed weights) on rendered text, on a real photo, with re-reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from markguard.vision.errors import IntegrityError
from markguard.vision.ocr import (
    OCR_ENGINES,
    EasyOcrEngine,
    OcrEngine,
    OcrLine,
    create_ocr_engine,
    shared_ocr_engine,
    verify_easyocr_weights,
)
from markguard.vision.text import WordmarkMatch, match_wordmarks

FONTS = Path("/usr/share/fonts/truetype/dejavu")
CLOTHING = Path(__file__).resolve().parents[3] / "shared" / "data" / "clothing"


def _render(lines: list[tuple[str, str, int]], size: tuple[int, int] = (600, 220)) -> np.ndarray:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    y = 16
    for text, font, px in lines:
        draw.text((20, y), text, fill=(20, 20, 20), font=ImageFont.truetype(str(FONTS / font), px))
        y += int(px * 1.8)
    return np.asarray(img)


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return shared_ocr_engine()  # one Reader per process: building it takes seconds


def test_registry_and_singleton(engine: OcrEngine) -> None:
    assert "easyocr-en" in OCR_ENGINES and isinstance(engine, EasyOcrEngine)
    assert shared_ocr_engine() is engine
    with pytest.raises(ValueError):
        create_ocr_engine("tesseract")


def test_weights_are_verified_before_loading(tmp_path: Path) -> None:
    with pytest.raises(IntegrityError, match="missing"):
        verify_easyocr_weights(tmp_path)
    (tmp_path / "craft_mlt_25k.pth").write_bytes(b"not the weights")
    (tmp_path / "english_g2.pth").write_bytes(b"not the weights")
    with pytest.raises(IntegrityError, match="SHA-256"):
        EasyOcrEngine(model_dir=tmp_path)


def test_craft_is_easyocrs_own_less_the_random_init(tmp_path: Path) -> None:
    import torch
    from easyocr.detection import get_detector

    from markguard.vision.ocr import _load_craft, easyocr_model_dir

    path = str(easyocr_model_dir() / "craft_mlt_25k.pth")
    theirs, ours = get_detector(path).state_dict(), _load_craft(path).state_dict()
    assert list(theirs) == list(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    partial = torch.load(path, map_location="cpu", weights_only=True)
    partial.pop(next(k for k in partial if k.endswith("running_var")))
    torch.save(partial, tmp_path / "craft.pth")
    with pytest.raises(RuntimeError, match="Missing key"):  # strict: no layer keeps its meta placeholder
        _load_craft(str(tmp_path / "craft.pth"))


def test_reads_a_rendered_wordmark_and_serial(engine: OcrEngine) -> None:
    image = _render([("PATAGONIA", "DejaVuSans-Bold.ttf", 52), ("SN AB12345678", "DejaVuSansMono.ttf", 36)])
    lines = engine.read(image)
    assert all(isinstance(ln, OcrLine) and 0 <= ln.confidence <= 1 for ln in lines)
    texts = [ln.text for ln in lines]
    assert texts == ["PATAGONIA", "SN AB12345678"], texts  # words on one row are merged into a line
    x0, y0, x1, y1 = lines[0].box
    assert 10 <= x0 < x1 <= 400 and 5 <= y0 < y1 <= 100
    hits = match_wordmarks(texts, brand="Patagonia", wordmarks={"Patagonia": ["Patagonia"]})
    assert [h.match for h in hits] == [WordmarkMatch.EXACT]
    [serial] = engine.read_serials(image, lines, pattern=r"[A-Z]{2}\d{8}")
    assert (serial.normalized, serial.format_ok, serial.line) == ("AB12345678", True, 1)


def test_allowlist_reread(engine: OcrEngine) -> None:
    image = _render([("4006381333931", "DejaVuSans.ttf", 40)], size=(460, 90))
    box = (10, 5, 440, 80)
    line = engine.reread_serial(image, box, allowlist="0123456789")
    assert line is not None and set(line.text) <= set("0123456789")
    assert line.text == "4006381333931"
    assert engine.reread_serial(image, (0, 0, 2, 2), allowlist="0123456789") is None


def test_label_on_a_real_photo_with_regions(engine: OcrEngine) -> None:
    photos = sorted(CLOTHING.glob("train/*/*.jpg"))
    if not photos:
        pytest.skip(f"shared clothing photos not found under {CLOTHING}")
    from markguard.vision.decode import read_image

    photo = np.array(Image.fromarray(read_image(photos[0])).resize((800, 1066)))
    label = _render([("LOT 7734 2291", "DejaVuSansMono-Bold.ttf", 30)], size=(300, 64))
    photo[600:664, 250:550] = label
    # a budget no load exhausts: the detector's scale follows the time left, and this checks reading
    lines = engine.read(photo, regions=[(200, 560, 600, 700)], budget_ms=600_000)
    assert "LOT 7734 2291" in [ln.text for ln in lines]
    [line] = [ln for ln in lines if ln.text == "LOT 7734 2291"]
    assert 200 <= line.box[0] and line.box[2] <= 600 and 560 <= line.box[1] and line.box[3] <= 700


def test_rejects_what_decode_would_not_give() -> None:
    engine = OcrEngine()  # the base class validates before any model runs
    with pytest.raises(ValueError):
        engine.read(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError):
        engine.read(np.zeros((10, 10, 3), dtype=np.float32))


def test_bench_smoke(engine: OcrEngine, tmp_path: Path) -> None:
    if not any(CLOTHING.glob("train/*/*.jpg")):
        pytest.skip(f"shared clothing photos not found under {CLOTHING}")
    from markguard.training.benchmarks.ocr import main

    out = tmp_path / "ocr.json"
    assert main(["--n", "2", "--quiet", "--out", str(out), "--threads", "2"]) == 0
    results = json.loads(out.read_text())
    assert results["overall"]["photos"] == 2 and len(results["photos"]) == 2
    for key in ("serial_exact_raw", "serial_exact_normalized", "checksum_valid_rate", "false_valid_rate",
                "misspelling_precision", "misspelling_recall", "ocr_ms_mean"):
        assert key in results["overall"]


def test_the_detector_scale_follows_the_photo_and_the_policy_never_the_clock(engine: OcrEngine, monkeypatch) -> None:
    """A slow detector pass (a loaded machine, a cold process) must not shrink the next photo's read, nor a
    fast one grow it: the plan prices a pass at `detect_ms_per_mpix`, whatever the clock said."""
    import time

    real, shapes, delays = engine._detect, [], iter([1.5, 0.0, 0.0])

    def detect(rgb: np.ndarray) -> list[np.ndarray]:
        shapes.append(rgb.shape[:2])
        time.sleep(next(delays, 0.0))
        return real(rgb)

    monkeypatch.setattr(engine, "_detect", detect)
    photo = _render([("PATAGONIA", "DejaVuSans-Bold.ttf", 110)], size=(1200, 800))
    reads = [[(ln.text, ln.box) for ln in engine.read(photo, budget_ms=1000)] for _ in range(3)]
    policy = engine.policy
    planned = np.sqrt(policy.detect_share * 1000 / policy.detect_ms_per_mpix * 1e6 / (1200 * 800))
    assert shapes == [shapes[0]] * 3 and abs(shapes[0][1] - 1200 * planned) <= 1, shapes
    assert reads[0] == reads[1] == reads[2] and any("PATAGONIA" in text for text, _ in reads[0]), reads
