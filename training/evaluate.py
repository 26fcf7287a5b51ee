"""`markguard evaluate --model PATH_OR_TAG --manifest M`: retrieval, claim verification, per-brand and
per-counterfeit-transform results of a model artifact, printed and written with a ROC plot.

Images are embedded with `vision.embed.embed_images`, each query as serving sees it (the full photo
and the crops `vision.regions.region_crops` proposes, up to the fusion's `max_regions`), and scored
with the artifact's own fusion, geometry signals included when the fusion uses them: the path serving
takes, without OCR.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from markguard.training.args import add_evaluate_arguments
from markguard.training.artifacts import json_metrics, resolve_model
from markguard.training.data import EvalSet, load_images, make_eval_set, read_items
from markguard.training.evaluation import (
    PhotoEvidence,
    evaluate_embeddings,
    make_claims,
    query_region_crops,
    split_blocks,
)
from markguard.training.plots import plot_per_brand, plot_roc
from markguard.vision.artifact import ModelArtifact
from markguard.vision.embed import embed_images
from markguard.vision.geometry import extract_features
from markguard.vision.scoring import Fusion

__all__ = ["get_args_parser", "main", "evaluate_artifact", "format_report"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a model artifact on a dataset manifest", add_help=add_help)
    add_evaluate_arguments(p)
    return p


def evaluate_artifact(artifact: ModelArtifact, eval_set: EvalSet, *, device: str = "cpu", batch_size: int = 32,
                      seed: int = 0, progress: bool = True, use_fusion: bool = True, regions: bool = True,
                      geometry: bool | None = None, proposals_from: ModelArtifact | None = None) -> dict[str, Any]:
    """Metrics of `artifact` on `eval_set`. `regions=False` embeds whole photos only; `geometry=None`
    adds geometry signals when the fusion is used and weighs them; `proposals_from` names another
    artifact whose mark detector proposes the regions (an ablation: one embedder, another's regions)."""
    model = artifact.load_embedder(device=device)
    refs = embed_images(model, load_images(eval_set.references), batch_size=batch_size, progress=progress)
    max_regions = artifact.max_regions if regions else 1
    detector = (proposals_from or artifact).load_detector(device=device) if regions else None
    crops, counts = query_region_crops(load_images(eval_set.queries), max_regions=max_regions, detector=detector)
    queries = split_blocks(embed_images(model, crops, batch_size=batch_size, progress=progress), counts)
    fusion = Fusion(artifact.fusion) if use_fusion else None
    if geometry is None:
        geometry = fusion is not None and "log_inliers" in fusion.spec.get("signals", {})
    photos = PhotoEvidence(query_features=[extract_features(i) for i in load_images(eval_set.queries)],
                           reference_features=[extract_features(i) for i in load_images(eval_set.references)]) \
        if geometry else PhotoEvidence()
    claims = make_claims(eval_set, refs, queries, seed=seed, photos=photos)
    return evaluate_embeddings(eval_set, refs, queries, fusion=fusion, seed=seed, claims=claims)


def format_report(name: str, m: dict[str, Any]) -> str:
    lines = [f"== {name}: {m['queries']} queries, {m['references']} references"]
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "claim_auc", "claim_tpr_at_fpr_1pct",
                "claim_tpr_at_fpr_5pct", "risk_auc", "risk_tpr_at_fpr_1pct", "risk_tpr_at_fpr_5pct",
                "genuine_to_takedown", "genuine_to_review_or_takedown", "not_genuine_flagged"):
        if key in m:
            lines.append(f"  {key:<30} {m[key]:.3f}")
    if "claim_negatives" in m:
        lines.append(f"  (claim_* : true claim vs {m['claim_negatives']} claims, on best genuine similarity)")
    lines.append(f"  {'brand':<24} {'recall@1':>9} {'queries':>8}")
    for brand, row in m["per_brand"].items():
        lines.append(f"  {brand:<24} {row['recall_at_1']:>9.3f} {row['queries']:>8d}")
    for key, title in (("counterfeit_flagged_by_transform", "transform"), ("counterfeit_flagged_by_strength", "strength")):
        if key in m:
            lines.append(f"  {'counterfeit ' + title:<24} {'flagged':>9} {'count':>8}")
            for k, row in m[key].items():
                lines.append(f"  {k:<24} {row['accuracy']:>9.3f} {row['count']:>8d}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return run(get_args_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    artifact = resolve_model(args.model, home=args.home, bentoml_home=args.bentoml_home)
    items = read_items(args.manifest)
    eval_set = make_eval_set(items, split=args.split, name=f"{Path(args.manifest).name}:{args.split}")
    if not eval_set.queries or not eval_set.references:
        raise SystemExit(f"markguard evaluate: split {args.split!r} of {args.manifest} has no queries or references")
    metrics = evaluate_artifact(artifact, eval_set, device=args.device, batch_size=args.batch_size, seed=args.seed,
                                progress=not args.quiet)
    out = Path(args.out or Path("runs") / f"eval-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"model {artifact.tag}")
    print(format_report(eval_set.name, metrics))
    result = {"model": artifact.tag, "manifest": str(args.manifest), "split": args.split, "metrics": json_metrics(metrics)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    for curve, value in plot_roc(metrics.get("_roc", {}), out / "roc.png",
                                 title=f"{artifact.tag}: claim verification").items():
        print(f"roc.png: {curve}: AUC {value:.4f}")
    plot_per_brand(metrics["per_brand"], out / "per_brand.png", title="recall@1 per brand")
    print(f"wrote {out / 'metrics.json'}, {out / 'roc.png'}, {out / 'per_brand.png'}")
    return 0 if np.isfinite(metrics["recall_at_1"]) else 1
