"""vision.geometry: a known homography is recovered, real matching pairs beat non-matching ones,
implausible homographies are refused, features survive their byte form.

`measure_geometry` is the grocery measurement; run with `-s` to print its figures.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from markguard.vision.decode import read_image
from markguard.vision.geometry import LocalFeatures, extract_features, match_features, verify

cv2.setNumThreads(1)


def _astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skimage_data.astronaut())


def _corners(width: int, height: int) -> np.ndarray:
    return np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)


def _apply(h: np.ndarray, points: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(points[None], h)[0]


def test_known_homography_is_recovered() -> None:
    reference = _astronaut()
    rotate = cv2.getRotationMatrix2D((256, 256), 20, 0.7)
    truth = np.vstack([rotate, [0, 0, 1]]) @ np.array([[1, 0.05, 0], [0.02, 1, 0], [2e-4, 1e-4, 1]])
    truth = np.array([[1, 0, 60], [0, 1, 40], [0, 0, 1]]) @ truth
    query = cv2.warpPerspective(reference, truth, (640, 560), borderValue=(90, 90, 90))

    match = verify(query, reference)

    assert match.rejected is None and match.homography is not None
    assert match.inliers >= 100 and match.inlier_ratio > 0.5
    corners = _corners(512, 512)
    error = np.linalg.norm(_apply(match.homography, corners) - _apply(truth, corners), axis=1)
    assert error.max() < 3.0, error
    x, y = _apply(truth, corners).T
    expected = (
        max(0, int(np.floor(x.min()))),
        max(0, int(np.floor(y.min()))),
        int(np.ceil(x.max())),
        int(np.ceil(y.max())),
    )
    assert match.box is not None and np.abs(np.subtract(match.box, expected)).max() <= 3


def test_large_photo_coordinates_are_in_original_pixels() -> None:
    reference = _astronaut()
    shift = np.array([[1.0, 0, 700], [0, 1, 300], [0, 0, 1]])
    query = cv2.warpPerspective(cv2.resize(reference, (1024, 1024)), shift, (2200, 1600))
    truth = shift @ np.diag([2.0, 2.0, 1.0])

    features = extract_features(query)
    assert features.scale < 1 and features.image_size == (2200, 1600)
    match = verify(features, reference)

    assert match.homography is not None
    corners = _corners(512, 512)
    assert np.abs(_apply(match.homography, corners) - _apply(truth, corners)).max() < 8.0
    assert match.box is not None and np.abs(np.subtract(match.box, (700, 300, 1724, 1324))).max() <= 8


def _synthetic(points: np.ndarray, descriptors: np.ndarray, size: tuple[int, int]) -> LocalFeatures:
    return LocalFeatures("sift", points.astype(np.float32), descriptors, size, 1.0)


def _random_features(n: int = 80, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    points = rng.uniform(10, 190, (n, 2))
    descriptors = rng.uniform(0, 1, (n, 128)).astype(np.float32)
    return _synthetic(points, descriptors, (200, 200))


def test_mirrored_view_is_not_accepted() -> None:
    reference = _random_features()
    mirrored = reference.points.copy()
    mirrored[:, 0] = 300 - mirrored[:, 0]

    refused = match_features(_synthetic(mirrored, reference.descriptors, (300, 200)), reference)
    assert refused.inliers == 0 and refused.homography is None and refused.box is None
    assert refused.rejected in ("mirrored", "no homography")  # USAC refuses most mirrored samples itself
    assert refused.matches == len(reference)


def test_extreme_scale_and_collapsed_inliers_are_rejected() -> None:
    reference = _random_features()
    tiny = _synthetic(reference.points / 40 + 50, reference.descriptors, (400, 400))
    assert match_features(tiny, reference).rejected == "extreme scale"

    rng = np.random.default_rng(1)
    spot = _synthetic(rng.uniform(100, 106, (60, 2)), reference.descriptors[:60], (200, 200))
    query = _synthetic(spot.points * 1.2 + 7, spot.descriptors, (300, 300))
    assert match_features(query, spot).rejected == "collapsed inliers"

    same = match_features(_synthetic(reference.points + 5, reference.descriptors, (300, 300)), reference)
    assert same.rejected is None and same.inliers == len(reference) and same.inlier_ratio == 1.0
    assert same.box == (5, 5, 205, 205)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (20, 3000), (3000, 20)])
def test_degenerate_images_give_no_match_without_error(shape: tuple[int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    match = verify(image, _astronaut())
    assert match.inliers == 0 and match.homography is None and match.box is None and match.rejected


def test_features_round_trip_through_bytes_without_pickle() -> None:
    features = extract_features(_astronaut(), max_keypoints=300)
    assert 0 < len(features) <= 300
    blob = features.to_bytes()
    assert len(blob) < features.descriptors.nbytes / 3  # SIFT descriptors are stored as bytes
    back = LocalFeatures.from_bytes(blob)
    assert (
        back.method == features.method
        and back.image_size == features.image_size
        and back.scale == features.scale
    )
    assert np.array_equal(back.points, features.points) and np.array_equal(
        back.descriptors, features.descriptors
    )

    buf = io.BytesIO()
    np.savez(buf, version=np.int64(1), method=np.array([object()], dtype=object))
    for bad in (buf.getvalue(), b"", b"PK\x03\x04 not a zip", features.to_bytes()[:100]):
        with pytest.raises(ValueError):
            LocalFeatures.from_bytes(bad)


def test_orb_features_match_too_but_not_with_sift() -> None:
    reference = _astronaut()
    query = cv2.warpAffine(reference, cv2.getRotationMatrix2D((256, 256), 10, 0.9), (512, 512))
    orb = verify(query, reference, method="orb")
    assert orb.inliers >= 30
    with pytest.raises(ValueError):
        match_features(extract_features(query, method="orb"), extract_features(reference))


def _brand(product: str) -> str:
    return "God-Morgon" if product.startswith("God-Morgon") else product.split("-")[0]


def _iconic(grocery: Path) -> dict[str, Path]:
    return {p.parent.name: p for p in sorted(grocery.glob("iconic/Packages/*/*/*_Iconic.jpg"))}


def test_real_matching_pair_has_many_more_inliers(grocery: Path) -> None:
    iconic = _iconic(grocery)
    query = read_image(
        grocery / "val/Packages/Oatghurt/Oatly-Natural-Oatghurt/Oatly-Natural-Oatghurt_002.jpg"
    )
    features = extract_features(query)
    same = verify(features, read_image(iconic["Oatly-Natural-Oatghurt"]))
    other_brand = verify(features, read_image(iconic["Garant-Ecological-Medium-Fat-Milk"]))
    assert same.inliers >= 40, same
    assert same.inliers >= 4 * max(other_brand.inliers, 1), (same, other_brand)
    assert same.box is not None


def measure_geometry(
    pairs: Iterable[tuple[Path, Path, bool]], *, cache: dict[Path, LocalFeatures] | None = None
) -> dict[str, float]:
    """Verify each (query photo, reference image, same product?) pair; the inlier count's AUC as a
    same-product detector and the cost. Features are extracted once per image (as scoring would for
    references) and kept in `cache`; the query extraction time counts only those done here."""
    reference_cache = query_cache = cache if cache is not None else {}
    labels, inliers, ratios = [], [], []
    extract_s, match_s = [], []
    for query_path, reference_path, same in pairs:
        if reference_path not in reference_cache:
            reference_cache[reference_path] = extract_features(read_image(reference_path))
        if query_path not in query_cache:
            image = read_image(query_path)
            start = time.perf_counter()
            query_cache[query_path] = extract_features(image)
            extract_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        match = match_features(query_cache[query_path], reference_cache[reference_path])
        match_s.append(time.perf_counter() - start)
        labels.append(int(same))
        inliers.append(match.inliers)
        ratios.append(match.inlier_ratio)
    return {
        "pairs": len(labels),
        "positives": sum(labels),
        "auc_inliers": float(roc_auc_score(labels, inliers)),
        "auc_inlier_ratio": float(roc_auc_score(labels, ratios)),
        "median_inliers_same": float(np.median([n for n, y in zip(inliers, labels, strict=True) if y])),
        "median_inliers_other": float(np.median([n for n, y in zip(inliers, labels, strict=True) if not y])),
        "ms_extract_query": 1000 * float(np.mean(extract_s)) if extract_s else float("nan"),
        "ms_match": 1000 * float(np.mean(match_s)),
    }


def grocery_pairs(grocery: Path, *, negatives: str) -> list[tuple[Path, Path, bool]]:
    """Each val photo against its product's iconic image, and against one other product's: of the same
    brand (`negatives="same-brand"`, look-alikes; products without a sibling have no negative) or of
    another brand (`"other-brand"`)."""
    iconic = _iconic(grocery)
    pairs = []
    for i, path in enumerate(sorted(grocery.glob("val/Packages/*/*/*.jpg"))):
        product = path.parent.name
        pairs.append((path, iconic[product], True))
        want_same_brand = negatives == "same-brand"
        others = sorted(
            k for k in iconic if k != product and (_brand(k) == _brand(product)) == want_same_brand
        )
        if others:
            pairs.append((path, iconic[others[i % len(others)]], False))
    return pairs


def test_grocery_same_product_beats_same_brand(grocery: Path) -> None:
    cache: dict[Path, LocalFeatures] = {}
    same_brand = measure_geometry(grocery_pairs(grocery, negatives="same-brand"), cache=cache)
    other_brand = measure_geometry(grocery_pairs(grocery, negatives="other-brand"), cache=cache)
    print(f"\ngeometry on grocery val, negatives of the same brand: {same_brand}")
    print(f"geometry on grocery val, negatives of another brand: {other_brand}")
    assert same_brand["auc_inliers"] >= 0.62  # measured 0.71: same-brand packages share their wordmark
    assert other_brand["auc_inliers"] >= 0.75
    assert same_brand["ms_match"] < 100  # about 6 ms on an idle core
