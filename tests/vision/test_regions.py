"""vision.regions: boxes always inside the photo, the full photo first, the cap and the dedupe held,
and a small mark pasted on a real photo is found."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from markguard.vision.decode import read_image
from markguard.vision.regions import Region, RegionSource, crop, iou, propose_regions

SHAPES = [
    (1, 1),
    (1, 7),
    (7, 1),
    (3, 5),
    (20, 3000),
    (3000, 20),
    (33, 65),
    (241, 97),
    (348, 348),
    (1200, 1600),
]


def _noise(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    return cv2.GaussianBlur(image, (0, 0), 3) if min(shape) > 8 else image


def _check(regions: list[Region], shape: tuple[int, int], *, max_regions: int, iou_threshold: float) -> None:
    height, width = shape
    assert 1 <= len(regions) <= max_regions
    assert regions[0] == Region((0, 0, width, height), RegionSource.FULL, 1.0)
    for region in regions:
        x0, y0, x1, y1 = region.box
        assert all(isinstance(v, int) for v in region.box), region
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (region, shape)
        assert np.isfinite(region.score) and region.score >= 0
        assert crop(np.zeros((height, width, 3), np.uint8), region).shape == (y1 - y0, x1 - x0, 3)
    for a, b in itertools.combinations(regions, 2):
        assert iou(a.box, b.box) <= iou_threshold + 1e-9, (a, b)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("max_regions", [1, 4, 10])
def test_boxes_inside_full_first_capped_and_deduplicated(shape: tuple[int, int], max_regions: int) -> None:
    regions = propose_regions(_noise(shape), max_regions=max_regions)
    _check(regions, shape, max_regions=max_regions, iou_threshold=0.4)


@pytest.mark.parametrize("shape", [(1, 1), (240, 320), (20, 3000)])
def test_flat_image_gets_the_full_photo_and_valid_windows(shape: tuple[int, int]) -> None:
    regions = propose_regions(np.full((*shape, 3), 128, np.uint8), max_regions=6)
    _check(regions, shape, max_regions=6, iou_threshold=0.4)
    assert {r.source for r in regions} <= {RegionSource.FULL, RegionSource.WINDOW}


def test_text_boxes_come_right_after_the_full_photo_padded_and_clipped() -> None:
    image = _noise((300, 400))
    text_boxes = [
        (100, 50, 220, 90),
        (380, 280, 500, 340),
        (-50, -50, -10, -10),
        (250.5, 200.2, 230.1, 160.7),
    ]
    regions = propose_regions(image, text_boxes=text_boxes, max_regions=8)

    _check(regions, (300, 400), max_regions=8, iou_threshold=0.4)
    texts = [r for r in regions if r.source is RegionSource.TEXT]
    assert [r.box for r in texts] == [(90, 40, 230, 100), (365, 265, 400, 300), (220, 150, 261, 211)]
    assert (
        regions[1 : 1 + len(texts)] == texts
    )  # the box outside the photo was dropped, the rest kept in order
    with pytest.raises(ValueError):
        propose_regions(image, text_boxes=[(1, 2, 3)])
    with pytest.raises(ValueError):
        propose_regions(image, text_boxes=[(0, 0, float("nan"), 5)])


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        propose_regions(_noise((10, 10)), max_regions=0)
    with pytest.raises(ValueError):
        propose_regions(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError):
        crop(_noise((10, 10)), (0, 0, 11, 5))
    with pytest.raises(ValueError):
        crop(_noise((10, 10)), (5, 0, 5, 5))


def naive_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU by counting pixels on a grid."""
    grid_a = np.zeros((40, 40), bool)
    grid_b = np.zeros((40, 40), bool)
    grid_a[a[1] : a[3], a[0] : a[2]] = True
    grid_b[b[1] : b[3], b[0] : b[2]] = True
    return (grid_a & grid_b).sum() / (grid_a | grid_b).sum()


def test_iou_equals_pixel_counting() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        xs, ys = np.sort(rng.choice(40, 2, replace=False)), np.sort(rng.choice(40, 2, replace=False))
        a = (int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1]))
        xs, ys = np.sort(rng.choice(40, 2, replace=False)), np.sort(rng.choice(40, 2, replace=False))
        b = (int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1]))
        assert iou(a, b) == pytest.approx(naive_iou(a, b))


def test_small_mark_on_a_real_photo_is_proposed(grocery: Path) -> None:
    """A package shrunk to a tenth of the frame's area and pasted on a blurred shelf photo: some
    proposal other than the full photo must frame it (IoU ≥ 0.3)."""
    background = read_image(grocery / "val/Packages/Milk/Arla-Standard-Milk/Arla-Standard-Milk_001.jpg")
    background = cv2.GaussianBlur(cv2.resize(background, (640, 480)), (0, 0), 6)
    mark = read_image(next(grocery.glob("iconic/Packages/Juice/Bravo-Apple-Juice/*_Iconic.jpg")))
    mark = cv2.resize(mark, (150, 150), interpolation=cv2.INTER_AREA)
    hits = []
    for x, y in [(40, 30), (430, 60), (250, 300)]:
        photo = background.copy()
        photo[y : y + 150, x : x + 150] = mark
        regions = propose_regions(photo, max_regions=10)
        _check(regions, photo.shape[:2], max_regions=10, iou_threshold=0.4)
        hits.append(max(iou(r.box, (x, y, x + 150, y + 150)) for r in regions[1:]))
    print(f"\nsmall pasted mark, best IoU of a proposal: {hits}")
    assert min(hits) >= 0.3, hits


def test_real_photos_fill_the_budget_quickly(grocery: Path) -> None:
    import time

    paths = sorted(grocery.glob("val/Packages/*/*/*.jpg"))[::10]
    elapsed = []
    for path in paths:
        image = read_image(path)
        start = time.perf_counter()
        regions = propose_regions(image, max_regions=10)
        elapsed.append(time.perf_counter() - start)
        _check(regions, image.shape[:2], max_regions=10, iou_threshold=0.4)
        assert len(regions) == 10
        assert {RegionSource.SALIENCY, RegionSource.WINDOW} & {r.source for r in regions}
    print(f"\npropose_regions: {1000 * np.mean(elapsed):.1f} ms per 348x348 photo")
    assert np.mean(elapsed) < 0.1


def test_mark_boxes_lead_grown_about_their_centre() -> None:
    """Detected marks come right after the full photo, before text boxes, grown by the margin about
    their centre (framed as enrolled logos are), shifted inside the photo at its edge; a thin wordmark
    is kept (down to 8 px), a speck is not."""
    image = _noise((300, 400))
    marks = [(100, 100, 200, 110), (380, 0, 420, 60), (10, 10, 14, 14)]
    regions = propose_regions(image, max_regions=8, mark_boxes=marks, text_boxes=[(20, 200, 120, 230)])
    _check(regions, (300, 400), max_regions=8, iou_threshold=0.4)
    assert [r.source for r in regions[:4]] == [RegionSource.FULL, RegionSource.MARK, RegionSource.MARK,
                                               RegionSource.TEXT]
    assert regions[1].box == (87, 98, 213, 112)  # 125 x 12.5: 1.25 x the mark, rounded outwards
    assert regions[2].box == (350, 0, 400, 75)  # 50 x 75, shifted into the photo rather than clipped
    with pytest.raises(ValueError, match="mark box"):
        propose_regions(image, mark_boxes=[(0, 0, float("inf"), 5)])
