"""vision: local evidence — where does a matched mark differ from its reference?

The global embedding sees a mark as a whole; a counterfeit edit (a mirrored element, a stretched mark,
a missing element, bolder strokes) changes a part of it. Given the query photo, one genuine reference
crop and their local features, `local_evidence` fits the reference → query homography (mirrors kept,
unlike `geometry.match_features`, since a mirror is evidence here), then measures:

- the homography's orientation (the sign of its Jacobian's determinant at the matched mark) and its
  anisotropy (log of the ratio of the Jacobian's singular values: 0 for a similarity view);
- inliers found only against the mirrored reference (an element flipped in place matches the mirror);
- coverage: the share of reference grid cells holding keypoints but no inlier (a removed element);
- after warping the query onto the reference's frame: the mark's ink share and stroke width against the
  reference's (log ratios), the distance of the ink's hue histograms, and the largest per-cell
  disagreement of the two ink masks.

Plain functions on arrays; no catalog, no model. Not registered as signals yet (see `vision.signals`).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from markguard.vision.geometry import LocalFeatures, _ratio_matches, extract_features

__all__ = ["Alignment", "LocalEvidence", "align", "anisotropy", "orientation", "empty_cells", "ink_mask",
           "stroke_width", "hue_distance", "cell_residual", "mirror_only_inliers", "local_evidence"]


@dataclasses.dataclass(frozen=True, eq=False)
class Alignment:
    """A homography reference → query and the matches consistent with it."""

    homography: np.ndarray  # (3, 3) float64, reference pixels → query pixels
    reference_points: np.ndarray  # (K, 2) inliers in reference pixels
    query_points: np.ndarray  # (K, 2) the same inliers in query pixels
    matches: int  # ratio-test matches the fit was drawn from

    @property
    def inliers(self) -> int:
        return len(self.reference_points)


@dataclasses.dataclass(frozen=True)
class LocalEvidence:
    """Local evidence of one query against one reference; fields are None when they could not be measured."""

    inliers: int  # of the (mirror-tolerant) fit; 0 when nothing fitted
    orientation: float | None  # +1 a proper view, -1 a mirror image of the reference
    anisotropy: float | None  # |log(s1 / s2)| of the homography's Jacobian at the inliers' centre
    mirror_only: float | None  # inliers against the mirrored reference at query points the direct fit missed, / inliers
    empty_cells: float | None  # share of the reference's keypoint-holding cells left without an inlier
    ink_ratio: float | None  # log(query ink share / reference ink share), query warped onto the reference
    stroke_ratio: float | None  # log(query stroke width / reference stroke width)
    hue_distance: float | None  # Bhattacharyya distance of saturation-weighted hue histograms of the ink
    residual_max: float | None  # largest per-cell share of pixels where the two ink masks disagree


def align(query: LocalFeatures, reference: LocalFeatures, *, ratio: float = 0.8, reproj_px: float = 4.0,
          min_inliers: int = 6) -> Alignment | None:
    """Ratio-test matches and a USAC/MAGSAC homography reference → query (None below `min_inliers`).

    Unlike `geometry.match_features` nothing is rejected for being mirrored or stretched: those are
    what the evidence measures."""
    pairs = _ratio_matches(query, reference, ratio=ratio)
    if len(pairs) < max(4, min_inliers):
        return None
    src = reference.points[pairs[:, 1]].astype(np.float64)
    dst = query.points[pairs[:, 0]].astype(np.float64)
    homography, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, reproj_px / query.scale, maxIters=2000,
                                          confidence=0.995)
    if homography is None or mask is None or not np.all(np.isfinite(homography)):
        return None
    keep = mask.ravel().astype(bool)
    if keep.sum() < min_inliers:
        return None
    return Alignment(homography, src[keep], dst[keep], len(pairs))


def _jacobian(homography: np.ndarray, point: np.ndarray) -> np.ndarray:
    """d(query)/d(reference) of the homography at `point` (reference pixels)."""
    h = homography / homography[2, 2] if abs(homography[2, 2]) > 1e-12 else homography
    x, y = float(point[0]), float(point[1])
    w = h[2, 0] * x + h[2, 1] * y + h[2, 2]
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / w
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / w
    return np.array([[(h[0, 0] - u * h[2, 0]) / w, (h[0, 1] - u * h[2, 1]) / w],
                     [(h[1, 0] - v * h[2, 0]) / w, (h[1, 1] - v * h[2, 1]) / w]])


def orientation(homography: np.ndarray, point: np.ndarray) -> float:
    """+1 when the homography keeps the handedness at `point`, -1 when it mirrors it."""
    return 1.0 if np.linalg.det(_jacobian(homography, point)) >= 0 else -1.0


def anisotropy(homography: np.ndarray, point: np.ndarray) -> float:
    """|log(s1 / s2)| of the Jacobian at `point`: 0 for a similarity, log(1.4) ≈ 0.34 for a 40 % stretch."""
    s = np.linalg.svd(_jacobian(homography, point), compute_uv=False)
    return float(np.log(max(s[0], 1e-12) / max(s[1], 1e-12)))


def empty_cells(reference_points: np.ndarray, inlier_points: np.ndarray, size: tuple[int, int], *, grid: int = 4,
                min_points: int = 3) -> float | None:
    """Share of the reference's `grid` x `grid` cells holding at least `min_points` keypoints but no inlier
    (None when no cell holds that many). `size` is the reference's (width, height)."""
    width, height = size

    def cells(points: np.ndarray) -> np.ndarray:
        if len(points) == 0:
            return np.zeros(grid * grid, np.int64)
        cx = np.clip((points[:, 0] * grid / max(width, 1)).astype(int), 0, grid - 1)
        cy = np.clip((points[:, 1] * grid / max(height, 1)).astype(int), 0, grid - 1)
        return np.bincount(cy * grid + cx, minlength=grid * grid)

    occupied = cells(reference_points) >= min_points
    if not occupied.any():
        return None
    hit = cells(inlier_points) > 0
    return float((occupied & ~hit).sum() / occupied.sum())


def ink_mask(image: np.ndarray, *, border: float = 0.1) -> np.ndarray:
    """The mark's ink on a crop whose outer `border` (share of each side) is background: Otsu on grey,
    ink being the class rarer in that border."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    _, dark = cv2.threshold(gray, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    h, w = dark.shape
    by, bx = max(1, round(h * border)), max(1, round(w * border))
    ring = np.ones_like(dark, bool)
    ring[by : h - by, bx : w - bx] = False
    dark = dark.astype(bool)
    return dark if dark[ring].mean() <= 0.5 else ~dark


def stroke_width(mask: np.ndarray) -> float | None:
    """Mean stroke width of a binary mask: 2 x the mean distance to background along the ink's skeleton
    ridge, estimated as 2 x area / boundary length (None without ink)."""
    m = mask.astype(np.uint8)
    area = int(m.sum())
    if area == 0:
        return None
    boundary = int((m & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)).sum())
    return 2.0 * area / max(boundary, 1)


def hue_distance(a: np.ndarray, b: np.ndarray, mask_a: np.ndarray, mask_b: np.ndarray, *, bins: int = 18) -> float | None:
    """Bhattacharyya distance of the saturation-weighted hue histograms of two RGB images' masked pixels;
    achromatic ink (saturation ~0) falls into one extra 'grey' bin."""

    def hist(image: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
        if not mask.any():
            return None
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)[mask].astype(np.float64)
        sat = hsv[:, 1] / 255
        out = np.zeros(bins + 1)
        np.add.at(out, np.minimum((hsv[:, 0] * bins / 256).astype(int), bins - 1), sat)
        out[bins] = (1 - sat).sum()
        return out / max(out.sum(), 1e-12)

    ha, hb = hist(a, mask_a), hist(b, mask_b)
    if ha is None or hb is None:
        return None
    return float(np.sqrt(max(0.0, 1.0 - np.sqrt(ha * hb).sum())))


def cell_residual(mask_a: np.ndarray, mask_b: np.ndarray, *, grid: int = 4, blur: int = 3) -> float:
    """Largest share, over a `grid` x `grid` split, of pixels where two same-sized ink masks disagree
    (both dilated by `blur` px first, so a pixel of misalignment does not count)."""
    kernel = np.ones((2 * blur + 1, 2 * blur + 1), np.uint8) if blur > 0 else None
    a, b = mask_a.astype(np.uint8), mask_b.astype(np.uint8)
    if kernel is not None:  # disagreement: ink of one beyond the other's dilated ink
        diff = (a & ~cv2.dilate(b, kernel).astype(bool)) | (b & ~cv2.dilate(a, kernel).astype(bool))
    else:
        diff = a ^ b
    diff = diff.astype(bool)
    h, w = diff.shape
    ys = np.linspace(0, h, grid + 1).astype(int)
    xs = np.linspace(0, w, grid + 1).astype(int)
    return float(max(diff[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].mean() if ys[i + 1] > ys[i] and xs[j + 1] > xs[j] else 0.0
                     for i in range(grid) for j in range(grid)))


def mirror_only_inliers(query: LocalFeatures, reference_image: np.ndarray, direct: Alignment | None, *,
                        near_px: float = 4.0) -> float | None:
    """Inliers of a fit against the left-right mirrored reference at query points that no direct inlier
    lies within `near_px` of, divided by the direct inliers (None when there is no direct fit).
    A symmetric genuine mark matches its mirror at the same points; an element flipped in place adds new ones."""
    if direct is None:
        return None
    mirrored = extract_features(np.ascontiguousarray(reference_image[:, ::-1]), method=query.method)
    fit = align(query, mirrored)
    if fit is None:
        return 0.0
    d = np.linalg.norm(fit.query_points[:, None, :] - direct.query_points[None, :, :], axis=2)
    return float((d.min(axis=1) > near_px / query.scale).sum() / direct.inliers)


def local_evidence(query_image: np.ndarray, reference_image: np.ndarray, *, query: LocalFeatures | None = None,
                   reference: LocalFeatures | None = None, grid: int = 4, with_mirror: bool = True) -> LocalEvidence:
    """Every local measure of `query_image` (a listing photo, RGB) against `reference_image` (a genuine
    reference crop, RGB); features are extracted when not given."""
    q = query if query is not None else extract_features(query_image)
    r = reference if reference is not None else extract_features(reference_image, method=q.method)
    fit = align(q, r)
    if fit is None:
        return LocalEvidence(0, None, None, None, None, None, None, None, None)
    centre = fit.reference_points.mean(axis=0)
    mirror = mirror_only_inliers(q, reference_image, fit) if with_mirror else None
    empty = empty_cells(r.points, fit.reference_points, r.image_size, grid=grid)
    height, width = reference_image.shape[:2]
    try:
        inverse = np.linalg.inv(fit.homography)
    except np.linalg.LinAlgError:
        inverse = None
    ink = stroke = hue = residual = None
    if inverse is not None and np.all(np.isfinite(inverse)):
        warped = cv2.warpPerspective(query_image, inverse, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REPLICATE)
        ref_ink, query_ink = ink_mask(reference_image), ink_mask(warped)
        if ref_ink.any() and query_ink.any():
            ink = float(np.log(query_ink.mean() / ref_ink.mean()))
            sq, sr = stroke_width(query_ink), stroke_width(ref_ink)
            stroke = float(np.log(sq / sr)) if sq and sr else None
            hue = hue_distance(warped, reference_image, query_ink, ref_ink)
            residual = cell_residual(query_ink, ref_ink, grid=grid, blur=max(1, round(min(height, width) / 64)))
    return LocalEvidence(
        inliers=fit.inliers,
        orientation=orientation(fit.homography, centre),
        anisotropy=anisotropy(fit.homography, centre),
        mirror_only=mirror,
        empty_cells=empty,
        ink_ratio=ink,
        stroke_ratio=stroke,
        hue_distance=hue,
        residual_max=residual,
    )
