"""vision.local_evidence: each measure moves on the edit it is meant to see and stays put on a copy.

A constructed mark (ink shapes and text on white, a textured element on the right) is edited as the
counterfeit transforms edit marks: mirrored, stretched, one element removed, one element flipped in
place, strokes thickened, hue shifted.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from markguard.vision.geometry import extract_features
from markguard.vision.local_evidence import (
    align,
    anisotropy,
    cell_residual,
    empty_cells,
    hue_distance,
    ink_mask,
    local_evidence,
    orientation,
    stroke_width,
)

cv2.setNumThreads(1)

H, W = 240, 480


def _mark() -> np.ndarray:
    """A mark of several elements: a wordmark (left), a ring (middle) and a textured block (right)."""
    rng = np.random.default_rng(7)
    img = np.full((H, W, 3), 255, np.uint8)
    cv2.putText(img, "MkG", (30, 150), cv2.FONT_HERSHEY_SIMPLEX, 2.6, (20, 40, 160), 9, cv2.LINE_AA)
    cv2.circle(img, (250, 120), 45, (20, 40, 160), 10)
    cv2.line(img, (220, 90), (280, 150), (20, 40, 160), 7)
    block = np.full((120, 110, 3), 255, np.uint8)
    for _ in range(14):  # an asymmetric pattern of strokes: rich in keypoints, changed by a flip
        p = rng.integers(0, [110, 120], size=(3, 2)).astype(np.int32)
        cv2.polylines(block, [p], False, (20, 40, 160), int(rng.integers(3, 7)))
    img[60:180, 340:450] = block
    return img


def _warp(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    size = size or (image.shape[1], image.shape[0])
    return cv2.warpPerspective(image, matrix, size, borderValue=(255, 255, 255))


def test_orientation_and_anisotropy_of_known_homographies() -> None:
    centre = np.array([100.0, 50.0])
    rotation = np.array([[np.cos(0.4), -np.sin(0.4), 5], [np.sin(0.4), np.cos(0.4), 7], [0, 0, 1]]) * 1.7
    mirror = np.diag([-1.0, 1.0, 1.0]) @ np.array([[1, 0, -300], [0, 1, 0], [0, 0, 1.0]])
    stretch = np.diag([1.4, 1.0, 1.0])
    assert orientation(rotation, centre) == 1.0
    assert orientation(mirror, centre) == -1.0
    assert anisotropy(rotation, centre) == pytest.approx(0.0, abs=1e-9)
    assert anisotropy(stretch, centre) == pytest.approx(np.log(1.4), abs=1e-9)
    # a perspective view measures the stretch where the mark is, not at the origin
    persp = np.array([[1.0, 0, 0], [0, 1.0, 0], [0.001, 0, 1.0]])
    assert anisotropy(persp, np.array([200.0, 0.0])) > 0.05


def test_a_copy_fits_with_a_proper_similarity_and_no_difference() -> None:
    ref = _mark()
    view = _warp(ref, np.array([[0.9, -0.1, 20], [0.1, 0.9, 30], [0, 0, 1.0]]), (W + 40, H + 60))
    ev = local_evidence(view, ref)
    assert ev.inliers >= 20
    assert ev.orientation == 1.0
    assert ev.anisotropy < 0.05
    assert ev.empty_cells is not None and ev.empty_cells <= 0.15
    assert ev.mirror_only is not None and ev.mirror_only < 0.1
    assert abs(ev.stroke_ratio) < 0.1 and abs(ev.ink_ratio) < 0.1
    assert ev.hue_distance < 0.1
    assert ev.residual_max < 0.05


def test_a_mirrored_mark_fits_against_the_mirror_with_negative_orientation() -> None:
    ref = _mark()
    query = np.ascontiguousarray(ref[:, ::-1])
    # SIFT does not match a mirror image to its original; the evidence is the fit to the mirrored reference
    direct = local_evidence(query, ref)
    assert direct.inliers < 20
    fit = align(extract_features(query), extract_features(np.ascontiguousarray(ref[:, ::-1])))
    assert fit is not None and fit.inliers >= 20
    # composed back into the original reference's frame, the view mirrors it
    flip = np.array([[-1.0, 0, W - 1], [0, 1, 0], [0, 0, 1]])
    assert orientation(fit.homography @ flip, np.array([W / 2, H / 2])) == -1.0


def test_a_stretched_mark_has_large_anisotropy() -> None:
    ref = _mark()
    query = cv2.resize(ref, (int(W * 1.4), H), interpolation=cv2.INTER_LINEAR)
    ev = local_evidence(query, ref)
    assert ev.inliers >= 20
    assert ev.anisotropy == pytest.approx(np.log(1.4), abs=0.05)


def test_a_removed_element_leaves_empty_cells_and_a_residual() -> None:
    ref = _mark()
    query = ref.copy()
    query[55:185, 335:455] = 255  # the textured block left out
    ev = local_evidence(query, ref)
    copy = local_evidence(ref.copy(), ref)
    assert ev.empty_cells is not None and ev.empty_cells >= 0.2 > (copy.empty_cells or 0.0)
    assert ev.residual_max > 0.3 > copy.residual_max
    assert ev.ink_ratio < -0.2


def test_an_element_flipped_in_place_adds_mirror_only_inliers() -> None:
    ref = _mark()
    query = ref.copy()
    query[60:180, 340:450] = ref[60:180, 340:450][:, ::-1]
    ev = local_evidence(query, ref)
    assert ev.inliers >= 10  # the rest of the mark still fits
    assert ev.mirror_only is not None and ev.mirror_only > 0.2
    assert ev.residual_max > 0.1


def test_bolder_strokes_raise_the_stroke_ratio() -> None:
    ref = _mark()
    ink = (ref.min(axis=2) < 128).astype(np.uint8)
    bold = cv2.dilate(ink, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
    query = np.where(bold[..., None] > 0, np.array([20, 40, 160], np.uint8), np.uint8(255)).astype(np.uint8)
    ev = local_evidence(query, ref)
    assert ev.inliers >= 6
    assert ev.stroke_ratio > 0.3
    assert ev.ink_ratio > 0.3


def test_stroke_width_of_drawn_bars() -> None:
    for width in (4, 8, 16):
        mask = np.zeros((200, 200), bool)
        for x in range(10, 190, 40):
            mask[20:180, x : x + width] = True
        assert stroke_width(mask) == pytest.approx(width, rel=0.15)
    assert stroke_width(np.zeros((10, 10), bool)) is None


def test_ink_mask_finds_ink_on_either_background() -> None:
    img = np.full((100, 100, 3), 240, np.uint8)
    img[30:70, 40:60] = 30
    assert ink_mask(img)[50, 50] and not ink_mask(img)[5, 5]
    assert ink_mask(255 - img)[50, 50] and not ink_mask(255 - img)[5, 5]


def test_hue_distance_separates_a_hue_shift() -> None:
    ref = _mark()
    mask = ink_mask(ref)
    hsv = cv2.cvtColor(ref, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 80) % 256
    shifted = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    assert hue_distance(ref, ref, mask, mask) == pytest.approx(0.0, abs=1e-6)
    assert hue_distance(shifted, ref, mask, mask) > 0.5


def test_empty_cells_and_cell_residual_on_constructed_points_and_masks() -> None:
    points = np.array([[x, y] for x in range(5, 100, 10) for y in range(5, 100, 10)], float)
    assert empty_cells(points, points, (100, 100), grid=2) == 0.0
    left = points[points[:, 0] < 50]
    assert empty_cells(points, left, (100, 100), grid=2) == 0.5
    assert empty_cells(np.zeros((0, 2)), np.zeros((0, 2)), (100, 100)) is None
    a = np.zeros((80, 80), bool)
    a[10:30, 10:30] = True
    b = a.copy()
    b[40:60, 40:60] = True  # exactly one of the 20 px cells
    assert cell_residual(a, a, grid=4) == 0.0
    assert cell_residual(a, b, grid=4, blur=1) == 1.0
