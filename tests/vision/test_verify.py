"""vision.verify: the mark verifier — crops as it reads them, its place in a model artifact (checksummed),
and the shipped verifier telling a reference's own mark from another brand's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.training.data import load_image
from markguard.vision.artifact import load_artifact, read_verifier, write_artifact
from markguard.vision.decode import read_image
from markguard.vision.errors import IntegrityError
from markguard.vision.evidence import ClaimEvidence, MarkEvidence
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.signals import compute_signals
from markguard.vision.verify import (
    MarkVerifier,
    VerifierConfig,
    claim_mark,
    framed,
    letterbox,
    query_mark_crop,
    reference_is_mark,
    reference_mark_iou,
)

REPO = Path(__file__).resolve().parents[2]
CANDIDATE = REPO / "training" / "experiments" / "issue21" / "verifier-t4"
CONFIG = VerifierConfig(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# the shipped verifier's gate, set on the calibration sets (training/README.md, "Shipped, only where it learnt")
MIN_REFERENCE_IOU = json.loads((REPO / "serving" / "default_model" / "verifier.json").read_text())["min_reference_iou"]


def test_letterbox_keeps_the_aspect_on_a_grey_canvas() -> None:
    photo = np.zeros((200, 400, 3), np.uint8)
    photo[50:90, 100:300] = 255  # a 200 x 40 white mark
    crop = letterbox(photo, (100, 50, 300, 90), 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    rows = np.nonzero(crop[:, 64, 0] == 255)[0]
    assert 24 <= len(rows) <= 27 and abs(rows.mean() - 63.5) < 1.5  # 128 * 40 / 200, centred
    assert (crop[:20] == 127).all() and (crop[-20:] == 127).all()
    # a box past the photo's edge is clipped, never empty
    assert letterbox(photo, (390, 190, 500, 300), 64).shape == (64, 64, 3)
    assert letterbox(photo, (450, 250, 460, 260), 64).shape == (64, 64, 3)


def test_the_query_crop_is_the_detectors_best_box_grown_or_the_whole_photo() -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    whole = query_mark_crop(photo, [], size=64, grow=1.25)
    assert np.array_equal(whole, letterbox(photo, (0, 0, 160, 120), 64))
    boxed = query_mark_crop(photo, [(40, 40, 80, 80), (0, 0, 10, 10)], size=64, grow=1.25)
    assert np.array_equal(boxed, letterbox(photo, (35, 35, 85, 85), 64))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="plain file name"):
        dataclasses.replace(CONFIG, weights_file="../verifier.safetensors")
    with pytest.raises(ValueError, match="references"):
        dataclasses.replace(CONFIG, references=0)
    with pytest.raises(ValueError, match="min_reference_iou"):
        dataclasses.replace(CONFIG, min_reference_iou=1.5)


def test_a_reference_is_framed_on_grey_twice_its_sides() -> None:
    photo = np.full((30, 50, 3), 9, np.uint8)
    canvas, where = framed(photo, 2.0)
    assert canvas.shape == (60, 100, 3) and where == (25, 15, 75, 45)
    assert (canvas[15:45, 25:75] == 9).all() and (canvas[:15] == 127).all()


def test_logo_crops_are_marks_and_package_shots_are_not(fresh_synth: Path, grocery: Path) -> None:
    """The gate that keeps the verifier to what it learnt: synthetic marks cropped as a brand enrols them
    (box grown 1.25x, on photos no build uses) are crops of a mark; grocery's catalogue package shots,
    with the brand's logo printed on them, are not. Without a detector nothing is."""
    from markguard.training.data import enrolled_crop, mark_box, read_items

    detector = load_artifact(REPO / "serving" / "default_model").load_detector()
    crops = [load_image(enrolled_crop(i, 1.25))[0] for i in read_items(fresh_synth) if mark_box(i) is not None]
    packages = [read_image(p) for p in sorted((grocery / "iconic").rglob("*_Iconic.jpg"))[::3]]
    marks = np.mean([reference_is_mark(c, detector, min_iou=MIN_REFERENCE_IOU) for c in crops])
    package_marks = np.mean([reference_is_mark(p, detector, min_iou=MIN_REFERENCE_IOU) for p in packages])
    print(f"\nreference_is_mark at IoU {MIN_REFERENCE_IOU}: {marks:.0%} of {len(crops)} logo crops, "
          f"{package_marks:.0%} of {len(packages)} package shots")
    assert MIN_REFERENCE_IOU > 0 and len(crops) >= 30 and len(packages) >= 10
    assert marks >= 0.8 and package_marks <= 0.1
    assert not reference_is_mark(crops[0], None, min_iou=MIN_REFERENCE_IOU)
    gated = MarkVerifier(dataclasses.replace(read_verifier(CANDIDATE).config, min_reference_iou=MIN_REFERENCE_IOU))
    assert gated.reference_map(packages[0], detector) is None and gated.reference_map(packages[0], None) is None
    assert read_verifier(CANDIDATE).reference_map(packages[0], None) is not None  # no gate: every reference


def test_an_artifact_keeps_the_verifier_pinned_and_refuses_tampered_weights(imagenet_artifact, tmp_path: Path) -> None:
    torch.manual_seed(0)
    verifier = MarkVerifier(CONFIG).eval()
    written = write_artifact(tmp_path / "a", state_dict=imagenet_artifact.load_embedder().state_dict(),
                             embedder=imagenet_artifact.embedder, fusion=imagenet_artifact.fusion,
                             card={"tag": "with-verifier"}, verifier=verifier)
    assert written.verifier is not None and written.card["verifier_sha256"] == written.verifier.weights_sha256
    loaded = load_artifact(tmp_path / "a").load_verifier()
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for _ in range(3)]
    maps = loaded.maps(crops)
    assert maps.shape == (3, 40, 16, 16)  # Lite0's first 4 stages: stride 8
    np.testing.assert_array_equal(loaded.logits(maps[:2], maps[2]), verifier.logits(verifier.maps(crops)[:2], maps[2]))
    photo = rng.integers(0, 256, (90, 200, 3), dtype=np.uint8)
    assert loaded.query_map(photo, []).shape == (1, 40, 16, 16)  # no mark found: the photo whole
    both = loaded.query_map(photo, [(20, 10, 80, 60)])  # the mark, and the photo whole
    assert both.shape == (2, 40, 16, 16) and loaded.logits(maps, both).shape == (3, 2)
    assert imagenet_artifact.load_verifier() is None

    weights = tmp_path / "a" / CONFIG.weights_file
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        read_verifier(tmp_path / "a")
    raw = json.loads((tmp_path / "a" / "verifier.json").read_text())
    (tmp_path / "a" / "verifier.json").write_text(json.dumps({**raw, "weights_sha256": ""}))
    with pytest.raises(IntegrityError, match="pins no"):
        read_verifier(tmp_path / "a")


def test_the_candidate_verifier_tells_a_references_own_mark_from_another_brands(grocery: Path) -> None:
    """Each iconic package photo claimed against two references, its own and another brand's: the claim's
    mark evidence names its own, at a lower logit. A reference whose photo is gone is skipped."""
    verifier = read_verifier(CANDIDATE)
    iconic = sorted((grocery / "iconic").rglob("*_Iconic.jpg"))
    by_brand: dict[str, Path] = {}
    for p in iconic:
        by_brand.setdefault(p.parent.name.split("-")[0], p)
    photos = [read_image(p) for p in list(by_brand.values())[:6]]
    maps = [verifier.reference_map(p, None) for p in photos]
    index = ReferenceIndex(4)
    vector = np.array([[1.0, 0, 0, 0]], np.float32)
    right = 0
    for a in range(len(photos)):
        b = (a + 1) % len(photos)
        index = ReferenceIndex(4)
        index.add(np.array([a, b]), np.repeat(vector, 2, 0), brand_ids=np.zeros(2, np.int64),
                  product_ids=np.full(2, -1), kinds=np.full(2, KIND_CODES["genuine"]))
        query = verifier.query_map(photos[a], [])
        found = claim_mark(index, vector[0], verifier, brand_id=0, product_id=None, query_map=lambda q=query: q,
                           reference_map=maps.__getitem__)
        right += found.reference_id == a
        gone = claim_mark(index, vector[0], verifier, brand_id=0, product_id=None, query_map=lambda q=query: q,
                          reference_map=lambda i, a=a: maps[i] if i != a else None)
        assert gone is not None and gone.reference_id == b and gone.logit >= found.logit
    assert right == len(photos)
    nothing = claim_mark(index, vector[0], verifier, brand_id=0, product_id=None, query_map=lambda: maps[0],
                         reference_map=lambda i: None)
    assert nothing is None


def test_the_mark_mismatch_signal_reads_the_mark_evidence() -> None:
    assert compute_signals(ClaimEvidence(brand="x"))["mark_mismatch"] is None
    assert compute_signals(ClaimEvidence(brand="x", mark=MarkEvidence(logit=1.5, reference_id=3)))["mark_mismatch"] == 1.5


def test_a_training_photo_loads_as_the_pipeline_decodes_it(grocery: Path) -> None:
    """`training.evaluation.mark_maps` reads references through `load_image`; serving decodes the blob."""
    from markguard.datasets.manifest import Label, ManifestRow
    from markguard.training.data import Item

    path = sorted((grocery / "iconic").rglob("*_Iconic.jpg"))[0]
    item = Item(path=path, row=ManifestRow(image=path.name, brand="b", product=None, split="val", label=Label.GENUINE))
    assert np.array_equal(load_image(item)[0], read_image(path))


def test_a_large_reference_is_judged_at_the_detectors_scale(grocery: Path) -> None:
    """A reference photo 8x larger is shrunk before it is framed: about the same IoU as the small one."""
    import cv2

    detector = load_artifact(REPO / "serving" / "default_model").load_detector()
    for p in sorted((grocery / "iconic").rglob("*_Iconic.jpg"))[:3]:
        photo = read_image(p)
        large = cv2.resize(photo, (photo.shape[1] * 8, photo.shape[0] * 8), interpolation=cv2.INTER_NEAREST)
        assert abs(reference_mark_iou(large, detector) - reference_mark_iou(photo, detector)) < 0.05
