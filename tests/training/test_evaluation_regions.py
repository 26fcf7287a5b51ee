"""Evaluation as serving sees a photo: region blocks, geometry signals, bootstrap intervals, mark views."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from markguard.datasets.manifest import Box, Label, ManifestRow
from markguard.training.data import EvalSet, Item, augment, mark_box, mark_view
from markguard.training.evaluation import (
    PhotoEvidence,
    bootstrap_intervals,
    evaluate_embeddings,
    make_claims,
    proposal_coverage,
)
from markguard.training.metrics import roc_auc
from markguard.vision.decode import read_image
from markguard.vision.geometry import extract_features

AUG = {"scale_min": 0.55, "rotate": 10.0, "brightness": 0.2, "contrast": 0.2, "blur_p": 0.0, "mark_context": [1.1, 1.8]}


def _item(brand: str, product: str, *, genuine: bool = True, name: str = "x.jpg") -> Item:
    row = ManifestRow(image=name, brand=brand, product=product, split="val",
                      label=Label.GENUINE if genuine else Label.COUNTERFEIT)
    return Item(path=Path(name), row=row)


def _unit(*v: float) -> np.ndarray:
    x = np.array(v, dtype=np.float32)
    return x / np.linalg.norm(x)


def _two_brand_set() -> tuple[EvalSet, np.ndarray]:
    refs = [_item("A", "a", name="ra"), _item("B", "b", name="rb")]
    queries = [_item("A", "a", name="q0"), _item("B", "b", name="q1")]
    return EvalSet(name="t", references=refs, queries=queries), np.stack([_unit(1, 0, 0), _unit(0, 1, 0)])


def test_a_region_finds_the_mark_the_full_photo_misses() -> None:
    es, refs = _two_brand_set()
    # query 0's full photo looks like brand B; its second region is brand A's mark
    blocks = [np.stack([_unit(0.2, 1, 0.3), _unit(1, 0.05, 0)]), np.stack([_unit(0.1, 1, 0)])]
    whole = evaluate_embeddings(es, refs, np.stack([b[0] for b in blocks]))
    served = evaluate_embeddings(es, refs, blocks)
    assert whole["recall_at_1"] == 0.5 and served["recall_at_1"] == 1.0
    claims = make_claims(es, refs, blocks)
    true_claim = claims.kind.index("true")  # query 0 claims A
    assert claims.region[true_claim] == 1
    assert claims.values[true_claim]["genuine_similarity"] == pytest.approx(float(blocks[0][1] @ refs[0]), abs=1e-5)
    assert served["regions_per_query"] == 1.5


def test_bootstrap_intervals_hold_the_estimate_and_pair_the_runs() -> None:
    rng = np.random.default_rng(0)
    n = 60
    refs = np.eye(4, dtype=np.float32)[:2]
    queries = [_item("A" if i % 2 else "B", "a" if i % 2 else "b", name=f"q{i}") for i in range(n)]
    es = EvalSet(name="t", references=[_item("A", "a"), _item("B", "b")], queries=queries)
    noise = rng.normal(size=(n, 4)).astype(np.float32)
    vectors = np.stack([refs[0] if q.brand == "A" else refs[1] for q in queries]) + 0.8 * noise
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    m = evaluate_embeddings(es, refs, vectors)
    ci = bootstrap_intervals([m, m], n, rounds=200)
    lo, hi = ci["recall_at_1"][0]
    assert lo <= m["recall_at_1"] <= hi and hi - lo > 0.01  # a real spread on 60 photos
    lo, hi = ci["claim_auc"][0]
    assert lo <= m["claim_auc"] <= hi
    assert ci["difference_claim_auc"][1] == (0.0, 0.0)  # the same run against itself, on paired draws
    # the claim AUC interval is computed on the claims the metric used (naive check of one draw)
    query, positive, mask, scores = m["_claims"]
    assert roc_auc(scores[mask], positive[mask]) == pytest.approx(m["claim_auc"])


def test_bootstrap_by_brand_resamples_whole_brands() -> None:
    # 10 brands x 12 photos; within a brand every photo is a hit or every one a miss, so the photos are
    # not independent draws: resampling photos understates the spread that resampling brands shows
    refs = np.eye(4, dtype=np.float32)[:2]
    queries, vectors = [], []
    for b in range(10):
        for i in range(12):
            brand = "A" if b % 2 else "B"
            queries.append(_item(brand, brand.lower(), name=f"q{b}-{i}"))
            right = b < 6  # brands 0-5 are recognised, 6-9 are not
            target = refs[0] if (brand == "A") == right else refs[1]
            vectors.append(target + 0.01 * i * np.array([0, 0, 1, 0], np.float32))
    vectors = np.stack(vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    es = EvalSet(name="t", references=[_item("A", "a"), _item("B", "b")], queries=queries)
    m = evaluate_embeddings(es, refs, vectors)
    assert m["recall_at_1"] == pytest.approx(0.6)
    n = len(queries)
    by_photo = bootstrap_intervals([m], n, rounds=300)["recall_at_1"][0]
    by_brand = bootstrap_intervals([m], n, rounds=300, groups=[q.path.name.split("-")[0] for q in queries])["recall_at_1"][0]
    assert by_brand[0] <= 0.6 <= by_brand[1]
    assert by_brand[1] - by_brand[0] > 2 * (by_photo[1] - by_photo[0])
    # one photo per group is the photo bootstrap itself (keys sort in query order: the same draws)
    singletons = bootstrap_intervals([m], n, rounds=300, groups=[f"{i:04d}" for i in range(n)])
    assert singletons["recall_at_1"][0] == by_photo
    with pytest.raises(ValueError, match="group keys"):
        bootstrap_intervals([m], n, groups=["x"])


def test_claim_auc_by_transform_scores_each_counterfeit_edit_against_the_true_claims() -> None:
    # brand A: genuine photos near its reference; `far` counterfeits are easy to tell, `near` ones are not
    refs = np.stack([_unit(1, 0, 0), _unit(0, 1, 0)])
    queries, vectors = [], []
    for i, (genuine, transform, vector) in enumerate([
        (True, None, _unit(1, 0.10, 0)), (True, None, _unit(1, 0.30, 0)), (True, None, _unit(1, 0.20, 0.1)),
        (False, "far", _unit(0.2, 0, 1)), (False, "far", _unit(0.3, 0, 1)),
        (False, "near", _unit(1, 0.15, 0)), (False, "near", _unit(1, 0.40, 0)),
    ]):
        row = ManifestRow(image=f"q{i}", brand="A", product="a", split="test", transform=transform,
                          label=Label.GENUINE if genuine else Label.COUNTERFEIT,
                          strength=None if genuine else 0.5)
        queries.append(Item(path=Path(f"q{i}"), row=row))
        vectors.append(vector)
    es = EvalSet(name="t", references=[_item("A", "a"), _item("B", "b")], queries=queries)
    m = evaluate_embeddings(es, refs, np.stack(vectors))
    by = m["claim_auc_by_transform"]
    assert set(by) == {"far", "near"} and by["far"]["count"] == 2 == by["near"]["count"]
    true_scores = [float(v @ refs[0]) for v in vectors[:3]]
    for t, fakes in (("far", vectors[3:5]), ("near", vectors[5:7])):  # naive AUC: share of ordered pairs
        pairs = [(g > float(f @ refs[0])) + 0.5 * (g == float(f @ refs[0])) for g in true_scores for f in fakes]
        assert by[t]["auc"] == pytest.approx(np.mean(pairs))
    assert by["far"]["auc"] == 1.0 > by["near"]["auc"]


def test_mark_view_is_a_crop_around_the_mark() -> None:
    image = np.zeros((256, 256, 3), np.uint8)
    image[100:140, 150:190] = 255
    row = ManifestRow(image="m.jpg", brand="A", label=Label.GENUINE, split="train",
                      boxes=(Box(kind="mark", x0=150, y0=100, x1=190, y1=140),))
    item = Item(path=Path("m.jpg"), row=row)
    assert mark_box(item, 0.5) == (75, 50, 95, 70)
    whole = (augment(image, rng=np.random.default_rng(0), params=AUG) > 128).mean()
    for seed in range(5):
        view = mark_view(image, mark_box(item), rng=np.random.default_rng(seed), params=AUG)
        assert max(view.shape[:2]) <= 1.8 * 40 + 2
        assert (view > 128).mean() > 5 * max(whole, 0.02)


def test_geometry_signals_see_the_same_package(grocery: Path) -> None:
    photos = sorted((grocery / "iconic" / "Packages" / "Juice" / "Bravo-Apple-Juice").glob("*.jpg"))
    other = sorted((grocery / "iconic" / "Packages" / "Soy-Milk" / "Alpro-Fresh-Soy-Milk").glob("*.jpg"))
    es, refs = _two_brand_set()
    images = [read_image(photos[0]), read_image(other[0])]
    ref_features = [extract_features(i) for i in images]
    query_features = [extract_features(images[0]), extract_features(images[1])]
    queries = np.stack([_unit(1, 0.1, 0), _unit(0.1, 1, 0)])
    claims = make_claims(es, refs, queries, photos=PhotoEvidence(query_features=query_features,
                                                                 reference_features=ref_features))
    by_kind = {(int(q), k): v for q, k, v in zip(claims.query, claims.kind, claims.values, strict=True)}
    assert by_kind[(0, "true")]["log_inliers"] > np.log1p(30)  # the same photo: many inliers
    assert by_kind[(0, "other_brand")]["log_inliers"] < np.log1p(15)


def test_tiny_run_calibrates_on_held_out_claims_with_geometry(tiny_run: Path) -> None:
    card = json.loads((tiny_run / "artifact" / "card.json").read_text())
    fusion = json.loads((tiny_run / "artifact" / "fusion.json").read_text())
    assert "grocery_val" in card["held_out_data"] and "grocery_val" not in card["calibration_data"]
    assert set(card["calibration_data"]) <= {"grocery_cal", "synth_val"}
    assert fusion["max_regions"] == 3
    assert "log_inliers" in fusion["signals"]
    assert card["calibration_ocr"] == {"sets": ["synth_val"], "photos_per_set": 4}


def test_synthetic_references_are_enrolled_as_mark_crops(tiny_synth: Path) -> None:
    from markguard.training.data import load_images, make_eval_set, read_items

    es = make_eval_set(read_items(tiny_synth), split="val")
    assert es.references and all(r.crop is not None for r in es.references)
    assert not any(q.crop for q in es.queries)
    for ref, image in zip(es.references, load_images(es.references), strict=True):
        x0, y0, x1, y1 = mark_box(dataclasses.replace(ref, crop=None))
        assert image.shape[0] <= 1.25 * (y1 - y0) + 2 and image.shape[1] <= 1.25 * (x1 - x0) + 2
        bx0, by0, bx1, by1 = mark_box(ref)  # the box in the crop's pixels: inside it
        assert 0 <= bx0 < bx1 <= image.shape[1] + 1 and 0 <= by0 < by1 <= image.shape[0] + 1


def test_proposal_coverage_counts_photos_whose_mark_a_region_finds() -> None:
    flat = np.full((200, 200, 3), 128, np.uint8)
    # the full photo is always a region, so a mark filling the photo is found; a 10-px mark is not
    found = proposal_coverage([flat, flat, flat], [(0, 0, 200, 200), (5, 5, 15, 15), None], max_regions=6)
    assert (found["share_found"], found["photos"], found["min_iou"]) == (0.5, 2, 0.5)
    assert 0.5 < found["mean_best_iou"] < 0.75  # (1 + the small mark's best IoU, under 0.5) / 2
    assert proposal_coverage([flat], [None], max_regions=6) is None
