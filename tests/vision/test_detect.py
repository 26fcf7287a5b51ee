"""vision.detect: the box coding inverts, the trunk is the ImageNet one, artifacts keep the detector
and refuse tampered weights."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from markguard.vision.artifact import load_artifact, write_artifact
from markguard.vision.detect import DetectorConfig, MarkDetector, decode_boxes, encode_boxes
from markguard.vision.embed import create_backbone, get_backbone
from markguard.vision.errors import IntegrityError
from markguard.vision.regions import iou

LITE0 = get_backbone("efficientnet_lite0")
CONFIG = DetectorConfig(mean=LITE0.pretrained.mean, std=LITE0.pretrained.std, input_size=128, hidden=16)


@pytest.fixture(scope="module")
def imagenet_trunk() -> dict[str, torch.Tensor]:
    return LITE0.pretrained_state()


@pytest.mark.parametrize(("box", "size"), [((62, 136, 178, 153), (256, 256)), ((10, 20, 300, 90), (240, 320)),
                                           ((500, 40, 900, 700), (768, 1024)), ((0, 0, 33, 7), (64, 48))])
def test_decode_inverts_encode(box: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    """Logits that are high exactly on the target cells, with the target distances, decode to the box."""
    target, distance = encode_boxes([box], [size], input_size=320, stride=16)
    assert target[0].sum() >= 1  # a thin mark still owns the cell holding its centre
    logit = torch.where(target[0] > 0, 5.0, -5.0)
    found = decode_boxes(logit, distance[0].log(), image_size=size, input_size=320, stride=16, max_boxes=3,
                         min_score=0.5, nms_iou=0.4)
    assert len(found) == 1  # every positive cell decodes to (nearly) the same box: NMS keeps one
    assert iou(found[0].box, box) > 0.9, (found[0].box, box)
    assert math.isclose(found[0].score, 1 / (1 + math.exp(-5.0)), rel_tol=1e-6)


def test_decode_keeps_the_score_floor_the_cap_and_nms() -> None:
    grid = 8
    logit = torch.full((grid, grid), -9.0)
    logit[1, 1], logit[1, 2], logit[6, 6], logit[4, 1] = 4.0, 3.0, 2.0, -2.5  # sigmoid(-2.5) = 0.076
    log_distance = torch.zeros(4, grid, grid)  # every box: 1 stride each side of its cell's centre
    common = dict(image_size=(128, 128), input_size=128, stride=16, nms_iou=0.4)
    found = decode_boxes(logit, log_distance, max_boxes=5, min_score=0.05, **common)
    assert [d.box for d in found] == [(8, 8, 40, 40), (24, 8, 56, 40), (88, 88, 120, 120), (8, 56, 40, 88)]
    assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
    assert len(decode_boxes(logit, log_distance, max_boxes=2, min_score=0.05, **common)) == 2
    assert len(decode_boxes(logit, log_distance, max_boxes=5, min_score=0.1, **common)) == 3
    tight = decode_boxes(logit, log_distance, max_boxes=5, min_score=0.05, **{**common, "nms_iou": 0.3})
    assert (24, 8, 56, 40) not in [d.box for d in tight]  # IoU 1/3 with the best box


def test_the_trunk_is_the_imagenet_prefix_and_stride_16(imagenet_trunk: dict[str, torch.Tensor]) -> None:
    detector = MarkDetector.from_trunk(CONFIG, imagenet_trunk).eval()
    reference = create_backbone("efficientnet_lite0", pretrained=True).eval()
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(detector.features(x), reference.forward_until(x, 11))
        logits, distances = detector(x)
    assert logits.shape == (2, 8, 8) and distances.shape == (2, 4, 8, 8)
    with pytest.raises(ValueError, match="stride"):
        MarkDetector(dataclasses.replace(CONFIG, trunk_blocks=13))  # ends at stride 32
    with pytest.raises(ValueError, match="multiple"):
        dataclasses.replace(CONFIG, input_size=100)
    with pytest.raises(ValueError, match="plain file name"):  # the weights stay inside the artifact
        dataclasses.replace(CONFIG, weights_file="../detector.safetensors")
    with pytest.raises(ValueError, match="std"):
        dataclasses.replace(CONFIG, std=(0.5, 0.0, 0.5))


def test_detect_returns_boxes_inside_each_photo(imagenet_trunk: dict[str, torch.Tensor]) -> None:
    torch.manual_seed(0)
    detector = MarkDetector.from_trunk(dataclasses.replace(CONFIG, min_score=0.0), imagenet_trunk)
    rng = np.random.default_rng(0)
    photos = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 300, 3), (400, 120, 3), (5, 5, 3))]
    for photo, found in zip(photos, detector.detect(photos, batch_size=2), strict=True):
        assert 1 <= len(found) <= CONFIG.max_boxes
        for d in found:
            x0, y0, x1, y1 = d.box
            assert 0 <= x0 < x1 <= photo.shape[1] and 0 <= y0 < y1 <= photo.shape[0]


def test_artifact_keeps_the_detector_and_refuses_tampered_weights(imagenet_trunk, imagenet_artifact, tmp_path) -> None:
    torch.manual_seed(0)
    detector = MarkDetector.from_trunk(CONFIG, imagenet_trunk).eval()
    state = imagenet_artifact.load_embedder().state_dict()
    written = write_artifact(tmp_path / "a", state_dict=state, embedder=imagenet_artifact.embedder,
                             fusion=imagenet_artifact.fusion, card={"tag": "with-detector"}, detector=detector)
    assert written.detector is not None and written.card["detector_sha256"] == written.detector.weights_sha256
    loaded = load_artifact(tmp_path / "a").load_detector()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), detector(x), strict=True))
    assert imagenet_artifact.load_detector() is None  # an artifact without one: regions from saliency alone

    weights = tmp_path / "a" / CONFIG.weights_file
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="SHA-256"):
        load_artifact(tmp_path / "a").load_detector()


def test_detector_files_from_before_the_backbone_interface_still_load(imagenet_trunk) -> None:
    """The shipped detector.safetensors names Lite0's prefix `stem.`, `stem_bn.`, `blocks.N.`: it loads (strict)."""
    torch.manual_seed(0)
    detector = MarkDetector.from_trunk(CONFIG, imagenet_trunk).eval()
    legacy = {"trunk._conv_stem.": "stem.", "trunk._bn0.": "stem_bn.", "trunk._blocks.": "blocks."}
    old_state = {}
    for key, value in detector.state_dict().items():
        old = next((key.replace(new, old, 1) for new, old in legacy.items() if key.startswith(new)), key)
        old_state[old] = value
    assert "stem.weight" in old_state and not any(k.startswith("trunk.") for k in old_state)
    loaded = MarkDetector(CONFIG).eval()
    loaded.load_state_dict(old_state, strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded(x), detector(x), strict=True))
