"""`markguard calibrate`: recalibrate an existing model artifact's fusion without retraining it.

The calibration sets are those `markguard train` selects (`training.train._load_data`, with the known
fakes and their copies of `calibration.with_known_fake_copies`). Their photos go through the pipeline
(`vision.pipeline.Scorer.plan` and `embed_plans`: decode, the artifact's mark detector, regions, the
artifact's embedder), then `calibration.calibrate_vectors` judges and fits them exactly as a training
run does. The new artifact has the same weights and detector, the new `fusion.json`, and a card with the
new figures, `derived_from` the old tag; its tag ends in `card.model_hash`.

Run folder: `vectors_<set>.npz` (region vectors and photo hashes, keyed by the artifact's weights and
the set's photos), `ocr_cache.json`, `known_fakes/` (the copies), `metrics.json`, `artifact/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from markguard.training.artifacts import git_commit, resolve_model
from markguard.training.calibration import calibrate_vectors, with_known_fake_copies
from markguard.training.card import calibration_fields, combined_hash, model_hash
from markguard.training.config import apply_override, load_config
from markguard.training.data import EvalSet, Item, load_images
from markguard.training.evaluation import evaluate_embeddings
from markguard.vision.artifact import ModelArtifact, load_artifact, read_verifier
from markguard.vision.embed.run import embed_images
from markguard.vision.index import ReferenceIndex
from markguard.vision.pipeline import BrandProfile, Scorer, ScoreRequest
from markguard.vision.scoring import Fusion
from markguard.vision.signals import signal_names

__all__ = ["run", "pipeline_vectors", "write_recalibrated"]

_PLANS_PER_PASS = 16  # photos planned and embedded together
# what a card's description gains when `--verifier` adds one
VERIFIER_DESCRIPTION = ("Mark verifier (vision.verify): the photo's mark against the claim's nearest genuine "
                        "references that are crops of a mark, cell by cell; its logit is the mark_mismatch signal, "
                        "fitted after the other signals.")


class _Unclaimed:
    """The pipeline's evidence source for planning photos with no claim (planning needs nothing else)."""

    def resolve(self, brand: str | None, product: str | None) -> tuple[BrandProfile | None, int | None]:
        return None, None


def pipeline_vectors(artifact: ModelArtifact, es: EvalSet, *, cache: Path, batch_size: int = 32,
                     progress: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """(reference vectors, one region block per query) of an eval set as the
    pipeline computes them: queries planned (detector, regions) and embedded by `Scorer`, references
    embedded whole as enrolment does; cached in `cache`, keyed by the weights and the photos."""
    key = hashlib.sha256(json.dumps([artifact.embedder.weights_sha256,
                                     artifact.detector.weights_sha256 if artifact.detector else None,
                                     artifact.max_regions,
                                     [(str(i.path), i.crop) for i in [*es.references, *es.queries]]]).encode()).hexdigest()
    if cache.is_file():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                counts = saved["counts"].tolist()
                return saved["references"], np.split(saved["queries"], np.cumsum(counts)[:-1])
    model = artifact.load_embedder()

    def embed(crops: Sequence[np.ndarray]) -> np.ndarray:
        return embed_images(model, crops, batch_size=batch_size)

    scorer = Scorer(_for_planning(artifact), index=ReferenceIndex(artifact.embedder.embedding_dim),
                    source=_Unclaimed(), embed=embed, detector=artifact.load_detector())  # type: ignore[arg-type]
    references = embed_images(model, load_images(es.references), batch_size=batch_size, progress=progress)
    blocks: list[np.ndarray] = []
    bar = tqdm(total=len(es.queries), desc=f"pipeline: {es.name}", unit="photo", disable=not progress, leave=False)
    for start in range(0, len(es.queries), _PLANS_PER_PASS):
        plans = [scorer.plan(ScoreRequest(_photo_bytes(item))) for item in es.queries[start : start + _PLANS_PER_PASS]]
        blocks += scorer.embed_plans(plans)
        bar.update(len(plans))
    bar.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, key=key, references=references, queries=np.concatenate(blocks),
             counts=np.array([len(b) for b in blocks]))
    return references, blocks


def _for_planning(artifact: ModelArtifact) -> ModelArtifact:
    """`artifact` with a fusion that weighs every signal (a zero prior for each it does not): planning
    weighs nothing, and a model made before a signal existed is recalibrated like any other."""
    fusion = dict(artifact.fusion)
    weighed = set(fusion.get("signals", {})) | set(fusion.get("priors") or {}) | {"genuine_similarity"}
    fusion["priors"] = {**(fusion.get("priors") or {}), **{n: 0.0 for n in signal_names() if n not in weighed}}
    return dataclasses.replace(artifact, fusion=fusion)


def _photo_bytes(item: Item) -> bytes:
    if item.crop is not None:
        raise ValueError(f"{item.path}: a query photo is scored whole, not cropped")
    return item.path.read_bytes()


def _config(artifact: ModelArtifact, overrides: Sequence[str]) -> dict[str, Any]:
    """Today's defaults under the model's own config (its data and calibration options)."""
    config = load_config()
    for section, values in artifact.card.get("config", {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update({k: v for k, v in values.items() if k in config[section]})
        elif section in config and not isinstance(config[section], dict):
            config[section] = values
    for assignment in overrides:
        apply_override(config, assignment)
    return config


def write_recalibrated(artifact: ModelArtifact, dest: Path, *, fusion: dict[str, Any], card: dict[str, Any],
                        verifier: Path | None = None) -> ModelArtifact:
    """A copy of `artifact` (weights, detector and verifier byte for byte; the `verifier` folder's
    verifier in place of its own, when given) with a new fusion and card, replacing `dest`."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(artifact.path, tmp)
    if verifier is not None:
        config = read_verifier(verifier).config
        if artifact.verifier is not None:
            (tmp / artifact.verifier.weights_file).unlink()
        for name in ("verifier.json", config.weights_file):
            shutil.copyfile(verifier / name, tmp / name)
        card = {**card, "verifier_sha256": config.weights_sha256}
        if (verifier / "verifier_card.json").is_file():  # how it was trained and what it scored
            card["verifier"] = json.loads((verifier / "verifier_card.json").read_text())
    for name, content in (("fusion.json", fusion), ("card.json", card)):
        (tmp / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    copied = load_artifact(tmp)  # the copied weights checked against their pinned SHA-256:
    copied.load_detector()
    copied.load_verifier()
    _replace_folder(tmp, dest)
    return load_artifact(dest)


def _replace_folder(tmp: Path, dest: Path) -> None:
    """Put the finished folder `tmp` in place of `dest`: its files made durable, the old folder moved
    aside, the new one renamed in and the parent synced, then the old one deleted. A failure puts the old
    one back; a crash leaves `dest` whole (old or new), or between the renames the old one whole beside
    it as `.<name>.old`."""
    for f in tmp.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    try:
        os.replace(tmp, dest)
    except OSError:
        if old.exists():
            os.replace(old, dest)  # put the previous output back
        raise
    _fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run(args: argparse.Namespace) -> int:
    from markguard.training.train import _load_data

    started = time.monotonic()
    torch.set_num_threads(args.threads)
    artifact = resolve_model(args.model)
    config = _config(artifact, args.overrides)
    run_dir = Path(args.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    _, eval_sets, hashes = _load_data(config)
    eval_sets = with_known_fake_copies(eval_sets, config, run_dir)
    vectors = {n: pipeline_vectors(artifact, es, cache=run_dir / f"vectors_{n}.npz", batch_size=args.batch_size,
                                   progress=not args.quiet) for n, es in eval_sets.items()}
    verifier = read_verifier(args.verifier) if args.verifier is not None else artifact.load_verifier()
    cal = calibrate_vectors(vectors, config=config, run_dir=run_dir, eval_sets=eval_sets, quiet=args.quiet,
                            verifier=verifier, detector=artifact.load_detector())
    fusion = Fusion(cal.spec)
    metrics = {n: evaluate_embeddings(es, *cal.vectors[n], fusion=fusion, claims=cal.claim_sets[n])
               for n, es in eval_sets.items()}
    model, detector = artifact.load_embedder(), artifact.load_detector()
    sha8 = model_hash(model.state_dict(), detector=detector.state_dict() if detector is not None else None,
                      fusion=cal.spec, verifier=verifier.state_dict() if verifier is not None else None)
    tag = f"{config['tag_prefix']}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{sha8}"
    fields = calibration_fields(config=config, calibration=cal, metrics=metrics, eval_sets=eval_sets)
    card = {**artifact.card, **fields, "tag": tag, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": f"markguard calibrate --model {args.model} --out {args.out}"
                       + (f" --verifier {args.verifier}" if args.verifier is not None else "")
                       + "".join(f" --set {s}" for s in args.overrides),
            "config": config,
            "derived_from": {"tag": artifact.tag, "change": "fusion recalibrated (`markguard calibrate`) with every "
                             "weight it applies, priors included, on calibration data holding known fakes and copies "
                             "of them; weights and detector unchanged"
                             + ("; the mark verifier of " + str(args.verifier) + " added" if args.verifier else "")}}
    card["data"] = {**artifact.card.get("data", {}), "manifests_sha256": hashes, "manifest_hash": combined_hash(hashes),
                    "eval_sets": {n: {"references": len(e.references), "queries": len(e.queries)}
                                  for n, e in eval_sets.items()}}
    if args.verifier is not None and VERIFIER_DESCRIPTION not in card.get("description", ""):
        card["description"] = f"{card.get('description', '')} {VERIFIER_DESCRIPTION}".strip()
    card["git_commit"] = git_commit()
    written = write_recalibrated(artifact, run_dir / "artifact", fusion=cal.spec, card=card, verifier=args.verifier)
    (run_dir / "metrics.json").write_text(json.dumps(card["metrics"], indent=2, sort_keys=True) + "\n")
    spec = cal.spec
    print(f"markguard calibrate: {artifact.tag} -> {tag} in {(time.monotonic() - started) / 60:.1f} min; fusion "
          f"calibrated on {cal.calibrate_on} ({spec['calibration']['claims']} claims)",
          json.dumps({k: spec[k] for k in ("review_at", "takedown_at", "match_threshold")}))
    print(f"  fitted: {spec['calibration']['signals']}; left out: {spec['calibration']['left_out']}")
    for p in cal.points:
        print(f"  {p.name}: threshold {p.threshold:.4f}, genuine claims at or above {p.fpr:.3f}, "
              f"not genuine {p.tpr:.3f}")
    for n, m in card["metrics"].items():
        print(f"  {n}: " + ", ".join(f"{k}={m[k]:.3f}" for k in ("recall_at_1", "claim_auc", "risk_auc",
                                                               "risk_tpr_at_fpr_5pct", "genuine_to_takedown",
                                                               "not_genuine_flagged") if k in m))
    print(f"markguard calibrate: artifact {written.path}")
    return 0
