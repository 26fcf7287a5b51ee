"""Fusion calibration for a trained embedder: claims on the held-out eval sets, judged with the
pipeline's evidence (embedding, known fakes, geometry, OCR) and the registry's signals, fitted into the
`fusion.json` spec with its review and takedown thresholds (`training.fusion.fit_fusion`)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from markguard.training.data import EvalSet, Item, load_images
from markguard.training.evaluation import ClaimSet, add_geometry, make_claims, split_blocks
from markguard.training.fusion import OperatingPoint, fit_fusion, threshold_at_fpr
from markguard.training.model import SplitEmbedder, embed_cached
from markguard.vision.geometry import extract_features

__all__ = ["Calibration", "calibrate", "calibrate_vectors", "stable_share"]


@dataclasses.dataclass
class Calibration:
    spec: dict[str, Any]  # fusion.json
    points: list[OperatingPoint]
    match_threshold: float
    calibrate_on: list[str]
    ocr_on: list[str]
    claim_sets: dict[str, ClaimSet]
    vectors: dict[str, tuple[np.ndarray, list[np.ndarray]]]  # per eval set: reference vectors, query region blocks


def stable_share(name: str) -> float:
    """A stable number in [0, 1) from a file name (the hold-out draw, the same on every machine)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def calibrate(*, split: SplitEmbedder, config: dict[str, Any], run_dir: Path, eval_sets: dict[str, EvalSet],
              eval_caches: dict[str, dict[str, torch.Tensor]], quiet: bool = False) -> Calibration:
    """Claims on every eval set with all their evidence; the fusion fitted on the calibration sets."""
    device = config["device"]
    vectors = {n: (embed_cached(split, eval_caches[n]["references"], device=device),
                   split_blocks(embed_cached(split, eval_caches[n]["queries"], device=device),
                                eval_caches[n]["query_regions"].tolist())) for n in eval_sets}
    return calibrate_vectors(vectors, config=config, run_dir=run_dir, eval_sets=eval_sets, quiet=quiet)


def calibrate_vectors(vectors: dict[str, tuple[np.ndarray, list[np.ndarray]]], *, config: dict[str, Any],
                      run_dir: Path, eval_sets: dict[str, EvalSet], quiet: bool = False) -> Calibration:
    """`calibrate` on vectors already computed (per eval set: reference vectors and query region blocks,
    as serving embeds them), for an embedder that was not trained by this run (`training.fuse`)."""
    c = config["calibration"]
    claim_sets = {n: make_claims(es, *vectors[n], seed=config["seed"]) for n, es in eval_sets.items()}
    if c["geometry"]:
        for n, es in eval_sets.items():
            add_geometry(claim_sets[n], vectors[n][1], _local_features(es.queries, f"{n} queries"),
                         _local_features(es.references, f"{n} references"))
    calibrate_on = [n for n in c["sets"] if n in claim_sets] or sorted(claim_sets)
    ocr_on = [n for n in c["ocr_sets"] if n in calibrate_on]
    if ocr_on and c["ocr_photos"]:
        _add_ocr(claim_sets, eval_sets, ocr_on, photos=int(c["ocr_photos"]), cache=run_dir / "ocr_cache.json",
                 quiet=quiet)
    values = [v for n in calibrate_on for v in claim_sets[n].values]
    not_genuine = np.concatenate([claim_sets[n].not_genuine for n in calibrate_on])
    other_sims = np.array([v["genuine_similarity"] for n in calibrate_on
                           for v, k in zip(claim_sets[n].values, claim_sets[n].kind, strict=True)
                           if k == "other_brand" and v["genuine_similarity"] is not None])
    match_threshold = threshold_at_fpr(other_sims, c["match_false_rate"]) if other_sims.size else 0.5
    spec, points = fit_fusion(values, not_genuine, match_threshold=match_threshold, takedown_fpr=c["takedown_fpr"],
                              review_fpr=c["review_fpr"], C=c["C"])
    spec["max_regions"] = int(config["eval"]["max_regions"])
    return Calibration(spec, points, match_threshold, calibrate_on, ocr_on, claim_sets, vectors)


def _add_ocr(claim_sets: dict[str, ClaimSet], eval_sets: dict[str, EvalSet], names: list[str], *, photos: int,
             cache: Path, quiet: bool) -> None:
    """OCR signals for the claims of the first `photos` query photos (by a hash of the file name) of
    each named set; the other claims keep them missing, which the fusion imputes as no evidence."""
    from markguard.training.ocr_evidence import add_ocr
    from markguard.vision.ocr import shared_ocr_engine

    engine = shared_ocr_engine()
    for n in names:
        es, claims = eval_sets[n], claim_sets[n]
        chosen = sorted(range(len(es.queries)), key=lambda q: stable_share(es.queries[q].row.image))[:photos]
        add_ocr(claims, es, engine, cache=cache, queries=set(chosen), progress=not quiet)


def _local_features(items: Sequence[Item], desc: str) -> list:
    """SIFT features of each photo, as serving's geometry check extracts them."""
    return [extract_features(image) for image in tqdm(load_images(items), desc=f"local features: {desc}",
                                                      unit="photo", leave=False)]
