"""Fusion calibration for a trained embedder: claims on the held-out eval sets, judged by the
pipeline's own judging step (`vision.pipeline.judge_claim`: embedding, geometry, the mark verifier,
known fakes and copies of them; OCR through `judge_text`) into the registry's signals, fitted into the
`fusion.json` spec with its review and takedown thresholds (`training.fusion.fit_fusion`, priors
included).

Known fakes are in the data, so their weights are learned: `add_known_fake_copies` enrols a few
counterfeit photos of each brand whole, as a counterfeit review does, and adds copies of them
(re-encoded, resized, cropped by a few percent) as claims of the brand they imitate."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from markguard.datasets.build import save_jpeg
from markguard.training.data import EvalSet, Item, load_images
from markguard.training.evaluation import ClaimSet, PhotoEvidence, make_claims, mark_maps, split_blocks
from markguard.training.fusion import PRIOR_COST_MARGIN, OperatingPoint, fit_fusion, threshold_at_fpr
from markguard.training.model import SplitEmbedder, embed_cached
from markguard.vision.detect import MarkDetector
from markguard.vision.geometry import extract_features
from markguard.vision.phash import phash
from markguard.vision.verify import MarkVerifier

__all__ = ["Calibration", "calibrate", "calibrate_vectors", "stable_share", "add_known_fake_copies", "with_known_fake_copies", "COPY_VIEWS"]


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
                      run_dir: Path, eval_sets: dict[str, EvalSet], quiet: bool = False,
                      verifier: MarkVerifier | None = None, detector: MarkDetector | None = None) -> Calibration:
    """`calibrate` on vectors already computed (per eval set: reference vectors and query region blocks,
    as serving embeds them), for an embedder that was not trained by this run (`training.fuse`). With the
    model's mark `verifier` (and the `detector` that finds the marks it reads), claims carry mark evidence."""
    c = config["calibration"]
    claim_sets = {}
    for n, es in eval_sets.items():
        photos = _photo_evidence(es, geometry=bool(c["geometry"]), desc=n, quiet=quiet)
        if verifier is not None:
            references, queries = mark_maps(es, verifier, detector, progress=not quiet)
            photos = dataclasses.replace(photos, verifier=verifier, query_marks=queries, reference_marks=references)
        claim_sets[n] = make_claims(es, *vectors[n], seed=config["seed"], photos=photos)
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
    # the base signals are fitted on the claims without known-fake copies, the staged signals (known fakes,
    # the mark verifier's) after them with the base held fixed
    copies = np.array([eval_sets[n].queries[q].row.transform == "known_fake_copy" for n in calibrate_on
                       for q in claim_sets[n].query])
    staged = copies.any() or verifier is not None
    spec, points = fit_fusion(values, not_genuine, match_threshold=match_threshold, takedown_fpr=c["takedown_fpr"],
                              review_fpr=c["review_fpr"], C=c["C"], base_claims=~copies if staged else None,
                              prior_cost_margin=float(c.get("prior_cost_margin", PRIOR_COST_MARGIN)),
                              groups=[n for n in calibrate_on for _ in claim_sets[n].values],
                              balance_groups=bool(c.get("balance_sets", False)),
                              thresholds_per_group=bool(c.get("thresholds_per_set", False)),
                              takedown_floor=("known_fake_copy",) if c.get("copy_takedown_floor", False) else ())
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


def _photo_evidence(es: EvalSet, *, geometry: bool, desc: str, quiet: bool = False) -> PhotoEvidence:
    """Every photo's perceptual hash and (with `geometry`) SIFT features, as serving computes them."""
    out: dict[str, list] = {}
    for part, items in (("query", es.queries), ("reference", es.references)):
        images = tqdm(load_images(items), desc=f"hashes{' and local features' if geometry else ''}: {desc} {part}",
                      unit="photo", leave=False, disable=quiet or None)
        pairs = [(phash(image).int64, extract_features(image) if geometry else None) for image in images]
        out[f"{part}_hashes"] = [h for h, _ in pairs]
        out[f"{part}_features"] = [f for _, f in pairs] if geometry else None
    return PhotoEvidence(**out)


# copies of an enrolled known fake, as a counterfeiter re-posts it: (name, scale, crop share per side, JPEG quality)
COPY_VIEWS = (("reencoded", 1.0, 0.0, 75), ("resized", 0.9, 0.0, 85), ("cropped", 0.9, 0.03, 80))


def add_known_fake_copies(es: EvalSet, out: Path, *, per_brand: int) -> EvalSet:
    """`es` with known fakes that were photographed more than once: for each brand, its first `per_brand`
    counterfeit query photos (by a hash of the file name) move to the references whole (a known fake, as a
    counterfeit review enrols the listing photo), and copies of each (`COPY_VIEWS`, written under `out`)
    join the queries as claims of the brand they imitate. Genuine queries stay, judged against them too."""
    chosen: dict[str, list[Item]] = {}
    for item in sorted((q for q in es.queries if not q.genuine), key=lambda q: stable_share(q.row.image)):
        if len(chosen.setdefault(item.brand, [])) < per_brand:
            chosen[item.brand].append(item)
    enrolled = [i for items in chosen.values() for i in items]
    if not enrolled:
        return es
    copies = []
    for item, image in zip(enrolled, load_images(enrolled), strict=True):
        for name, scale, crop, quality in COPY_VIEWS:
            rel = f"{Path(item.row.image).with_suffix('').as_posix().replace('/', '_')}_{name}.jpg"
            h, w = image.shape[:2]
            dy, dx = round(h * crop), round(w * crop)
            view = cv2.resize(image[dy : h - dy, dx : w - dx], (max(1, round((w - 2 * dx) * scale)),
                                                                 max(1, round((h - 2 * dy) * scale))),
                              interpolation=cv2.INTER_AREA) if scale != 1.0 or crop else image
            if not (out / rel).is_file():
                save_jpeg(out / rel, view, quality=quality)
            copies.append(Item(path=out / rel, row=dataclasses.replace(item.row, image=rel, boxes=(),
                                                                       transform="known_fake_copy")))
    moved = {id(i) for i in enrolled}
    return dataclasses.replace(es, references=[*es.references, *enrolled],
                               queries=[q for q in es.queries if id(q) not in moved] + copies)


def with_known_fake_copies(eval_sets: dict[str, EvalSet], config: dict[str, Any], run_dir: Path) -> dict[str, EvalSet]:
    """The calibration sets with `calibration.known_fakes_per_brand` known fakes per brand and their copies
    (`add_known_fake_copies`, written under `run_dir/known_fakes/`); reported sets unchanged."""
    c = config["calibration"]
    per_brand = int(c.get("known_fakes_per_brand", 0))
    return {n: add_known_fake_copies(es, run_dir / "known_fakes" / n, per_brand=per_brand)
            if per_brand and n in c["sets"] else es for n, es in eval_sets.items()}
