"""The model card and tag: what a trained artifact is, how it was made, and what it scored."""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import torch

from markguard.training.artifacts import git_commit, json_metrics
from markguard.training.calibration import Calibration
from markguard.training.data import EvalSet

__all__ = ["model_card", "calibration_fields", "model_hash", "state_hash", "combined_hash", "argv_of"]


def state_hash(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    _update_with_state(h, state)
    return h.hexdigest()[:8]


def _update_with_state(h: Any, state: dict[str, torch.Tensor]) -> None:
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())


def model_hash(embedder: dict[str, torch.Tensor], *, detector: dict[str, torch.Tensor] | None,
               fusion: dict[str, Any], verifier: dict[str, torch.Tensor] | None = None) -> str:
    """The 8 hex digits that end a model's tag: a hash of everything that decides a score (the embedder's,
    the detector's and the mark verifier's weights, the fusion with its thresholds), so two artifacts
    with the same hash score alike. (Tags before it hashed the embedder alone.)"""
    h = hashlib.sha256()
    _update_with_state(h, embedder)
    h.update(b"\x00detector")
    if detector is not None:
        _update_with_state(h, detector)
    if verifier is not None:  # after the detector, so a model without one keeps its hash
        h.update(b"\x00verifier")
        _update_with_state(h, verifier)
    h.update(b"\x00fusion")
    h.update(json.dumps(fusion, sort_keys=True).encode())
    return h.hexdigest()[:8]


def combined_hash(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def argv_of(args: argparse.Namespace) -> list[str]:
    out = ["--resume", str(args.resume)] if args.resume else []
    if args.config:
        out += ["--config", str(args.config)]
    for s in args.overrides:
        out += ["--set", s]
    if args.device:
        out += ["--device", args.device]
    return out


def model_card(*, tag: str, config: dict[str, Any], command: str, calibration: Calibration,
               metrics: dict[str, dict[str, Any]], baseline: dict[str, Any], hashes: dict[str, str], classes: int,
               train_images: int, eval_sets: dict[str, EvalSet], seconds: dict[str, float], cache_reused: list[str],
               detector_report: dict[str, Any] | None) -> dict[str, Any]:
    """`card.json`: the tag, how the model was made (config, command, data hashes, commit, time) and what
    it scored on every eval set, with the calibrated operating points."""
    card = {
        "tag": tag,
        "description": ("EfficientNet-Lite0 (ImageNet) + linear head, fine-tuned with ArcFace where each "
                        "(brand, product, genuine-or-transform) is a class, on whole photos and crops around their marks; "
                        "logistic fusion over the best region's embedding signals and geometry (SIFT inliers), "
                        "calibrated on claims held out of training (calibration_data)."),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": config,
        "data": {"manifests_sha256": hashes, "manifest_hash": combined_hash(hashes), "train_images": train_images,
                 "classes": classes, "eval_sets": {n: {"references": len(e.references), "queries": len(e.queries)}
                                                   for n, e in eval_sets.items()}},
        "git_commit": git_commit(),
        "training": {"seconds": seconds, "feature_cache_reused": cache_reused, "device": config["device"],
                     "epochs": config["optim"]["epochs"], "torch": torch.__version__, "threads": config["threads"]},
        "baseline_metrics": {"model": "imagenet-lite0 pooled (no head)", **baseline},
        **calibration_fields(config=config, calibration=calibration, metrics=metrics, eval_sets=eval_sets),
    }
    if detector_report is not None:
        card["description"] += (" Regions: a learned mark detector (FCOS head on the frozen ImageNet Lite0 trunk at "
                                "stride 16, trained on the training photos' mark boxes) leads the proposals.")
        card["detector"] = detector_report
    return card


def calibration_fields(*, config: dict[str, Any], calibration: Calibration, metrics: dict[str, dict[str, Any]],
                       eval_sets: dict[str, EvalSet]) -> dict[str, Any]:
    """The card's figures of a calibration (`markguard train` and `markguard calibrate` write the same):
    metrics with the fitted fusion, operating points, which sets calibrated it and which are held out."""
    c, cal = config["calibration"], calibration
    return {
        "metrics": {n: json_metrics(m) for n, m in metrics.items()},
        "operating_points": [p.__dict__ for p in cal.points] + [{"name": "match", "threshold": cal.match_threshold,
                                                                  "false_match_target": c["match_false_rate"],
                                                                  "meaning": "best similarity an unclaimed photo needs to name a brand"}],
        "calibration_data": cal.calibrate_on,
        "calibration_ocr": {"sets": cal.ocr_on, "photos_per_set": c["ocr_photos"]},
        "calibration_known_fakes": {"per_brand": c.get("known_fakes_per_brand", 0),
                                    "copy_claims": sum(k == "known_fake_copy" for n in cal.calibrate_on
                                                       for k in _transforms(cal, eval_sets, n))},
        "held_out_data": sorted(set(eval_sets) - set(cal.calibrate_on)),
    }


def _transforms(cal: Calibration, eval_sets: dict[str, EvalSet], name: str) -> list[str | None]:
    queries = eval_sets[name].queries
    return [queries[int(q)].row.transform for q in cal.claim_sets[name].query]
