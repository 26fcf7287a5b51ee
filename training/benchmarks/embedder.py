"""`markguard bench embedder`: the ImageNet-only embedder against a trained model, side by side, on
grocery val (real photos; the catalogue images as references) and on held-out synthetic brands (the
synthetic build's `test` split, brand-disjoint from training and calibration).

Both models embed through `vision.embed.embed_images` and see each query photo as serving does: the
full photo and the crops `vision.regions` proposes (`--whole-photo`: the full photo only;
`--mark-crops`: only the photo's true `mark` box grown by 1.25, where the manifest has one, which
separates what the embedder can tell from what the region proposals find). Metrics:
product/brand recall@1 of unclaimed photos, and claim AUC on the claim's best genuine similarity over
the photo's regions (grocery: true product vs another product of the same brand; synthetic: genuine
photo vs a counterfeit claiming the brand); `claim_auc_other_brand` (true claim vs a claim of another
brand) is printed beside them for context, and, as served, how often a region overlaps a query's
true mark box (IoU >= 0.5: whether the proposals find the mark at all). Each figure carries two 95%
bootstrap intervals, because held-out sets are small: one resampling query photos, one resampling
whole brands (a brand's photos share its mark and references, so for unseen brands the brand is the
unit of generalisation). `--synth` may name a larger held-out build (`markguard datasets synth
--splits test --brands N`): its test brands are never in a build the model was trained on.

As served, each model proposes its own regions: the ImageNet-only baseline from saliency and windows,
a trained model with a mark detector from its detections first. When it has one, an ablation row
(`imagenet_on_trained_regions`) embeds the trained model's regions with the ImageNet embedder, and
the trained model's gain splits into what its regions add and what its embedder adds on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from markguard.datasets.splits import unit_hash
from markguard.training.artifacts import json_metrics, resolve_model
from markguard.training.data import (
    Item,
    enrolled_crop,
    ensure_grocery,
    ensure_grozi,
    ensure_synth,
    load_images,
    make_eval_set,
    mark_box,
    read_items,
)
from markguard.training.evaluate import evaluate_artifact
from markguard.training.evaluation import bootstrap_intervals, proposal_coverage
from markguard.training.metrics import roc_auc
from markguard.vision.artifact import ModelArtifact, build_imagenet_artifact
from markguard.vision.atomic import atomic_write_bytes

__all__ = ["get_args_parser", "main"]

SHIPPED = Path(__file__).resolve().parents[2] / "serving" / "default_model"
_NO_FUSION = {"kind": "provisional", "similarity_floor": 0.0, "similarity_ceiling": 1.0, "match_threshold": 0.0,
              "review_at": 0.5, "takedown_at": 0.9}  # the bench compares embeddings only
COLUMNS = ("recall_at_1", "claim_auc")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="markguard bench embedder", description=__doc__.splitlines()[0], add_help=add_help)
    p.add_argument("--model", default=str(SHIPPED), help="trained artifact folder or tag (default: the shipped model)")
    p.add_argument("--grocery", type=Path, default=Path(".markguard/data/grocery"),
                   help="grocery manifest folder (built with `markguard datasets grocery` when missing; '' to skip)")
    p.add_argument("--synth", type=Path, default=Path(".markguard/data/synth"),
                   help="a synthetic build whose --synth-split brands the model never saw: the build it was trained "
                        "on, or a larger held-out one (`datasets synth --splits test`); '' to skip")
    p.add_argument("--synth-split", default="test", help="held-out split of the synthetic build (default test)")
    p.add_argument("--grozi", type=Path, default=Path(""),
                   help="GroZi-120 yardstick folder (real in-store frames of 120 products no training set holds; "
                        "built with `markguard datasets grozi` when missing; default '': skipped)")
    p.add_argument("--max-queries", type=int, default=0,
                   help="at most this many queries per set, taken round-robin over products in an order fixed by a "
                        "hash of each photo's path (0: all); references are kept whole")
    queries_as = p.add_mutually_exclusive_group()
    queries_as.add_argument("--whole-photo", action="store_true", help="embed whole photos only (no region crops)")
    queries_as.add_argument("--mark-crops", action="store_true",
                            help="embed each query's true mark box (grown 1.25x) instead of region crops (a diagnostic)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    p.add_argument("--card", action="store_true",
                   help="also record the results as `bench_embedder` in the trained artifact's card.json")
    p.add_argument("--quiet", action="store_true")
    return p


def _trained_on_brands(artifact: ModelArtifact) -> set[str]:
    """Brands of the training split of the synthetic build named in the model's card, when it is on disk
    (empty otherwise): a held-out set must not contain one."""
    synth = artifact.card.get("config", {}).get("data", {}).get("synth")
    if not synth or not (Path(synth) / "manifest.jsonl").is_file():
        return set()
    return {i.brand for i in read_items(synth) if i.row.split == "train"}


GROZI_SET = "GroZi-120 (real in-store frames)"
MIXED_NEGATIVES = "same_brand_else_other_brand"


def subsample_queries(queries: Sequence[Item], limit: int) -> list[Item]:
    """At most `limit` queries, deterministically: each product's photos ordered by a hash of their
    path, then taken one per product per round (products in name order), so every product keeps
    about the same share; returned in their original order."""
    if limit <= 0 or len(queries) <= limit:
        return list(queries)
    by_product: dict[tuple[str, str], list[int]] = {}
    for k, q in enumerate(queries):
        by_product.setdefault((q.brand, q.product or ""), []).append(k)
    lanes = [sorted(ks, key=lambda k: (unit_hash("bench-queries", queries[k].row.image), queries[k].row.image))
             for _, ks in sorted(by_product.items())]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < limit:
        chosen += [lane[depth] for lane in lanes if depth < len(lane)][: limit - len(chosen)]
        depth += 1
    return [queries[k] for k in sorted(chosen)]


def mixed_brand_claims(m: dict) -> None:
    """Make the primary claim set of `m` (an `evaluate_embeddings` result) each genuine photo's true
    claim against one false claim: another product of its brand where the brand has one, another
    brand otherwise (GroZi-120: 12 of 104 brands hold several products). Rewrites `claim_auc`,
    `claim_negatives` and `_claims` (which `bootstrap_intervals` resamples) in place; `claim_vs_same_brand`
    and `claim_vs_other_brand` keep the separate figures."""
    claim_query, positive, mask, scores = m["_claims"]
    if m.get("claim_negatives") == "same_brand":  # mask = true | same_brand; the rest are other_brand claims
        has_same = np.zeros(int(claim_query.max()) + 1 if len(claim_query) else 0, dtype=bool)
        has_same[claim_query[mask & ~positive]] = True
        mixed = mask | (~positive & ~has_same[claim_query])
    elif m.get("claim_negatives") == "other_brand":
        mixed = mask
    else:
        raise ValueError(f"mixed brand claims need same_brand or other_brand claims, not {m.get('claim_negatives')}")
    m["_claims"] = (claim_query, positive, mixed, scores)
    m["claim_negatives"] = MIXED_NEGATIVES
    m["claim_auc"] = roc_auc(scores[mixed], positive[mixed])


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    trained = resolve_model(args.model)
    sets = {}
    if str(args.grocery) not in ("", "."):
        sets["grocery val (real photos)"] = make_eval_set(read_items(ensure_grocery(args.grocery)), split="val")
    if str(args.synth) not in ("", "."):
        if not (Path(args.synth) / "manifest.jsonl").is_file() and not Path(args.synth).is_file():
            cfg = trained.card.get("config", {}).get("data", {})
            ensure_synth(args.synth, brands=cfg.get("synth_brands", 120), per_brand=cfg.get("synth_per_brand", 6),
                         size=cfg.get("synth_size", 256), seed=cfg.get("synth_seed", 0),
                         paired_scenes=cfg.get("synth_paired_scenes", False))
        held_out = make_eval_set(read_items(args.synth), split=args.synth_split)
        seen = _trained_on_brands(trained) & {q.brand for q in held_out.queries}
        if seen:
            raise SystemExit(f"markguard bench embedder: {len(seen)} brands of {args.synth} ({args.synth_split}) are in "
                             f"the model's training photos, e.g. {sorted(seen)[:3]}: not held out")
        sets[f"synthetic held-out ({args.synth_split})"] = held_out
    if str(args.grozi) not in ("", "."):
        sets[GROZI_SET] = make_eval_set(read_items(ensure_grozi(args.grozi)), split="query", name="grozi")
    if args.max_queries < 0:
        raise SystemExit("markguard bench embedder: --max-queries must be 0 (all) or more")
    if args.max_queries:
        sets = {name: dataclasses.replace(es, queries=subsample_queries(es.queries, args.max_queries))
                for name, es in sets.items()}
    if args.mark_crops:
        sets = {name: dataclasses.replace(es, queries=[enrolled_crop(q, 1.25) for q in es.queries])
                for name, es in sets.items()}
    as_served = not (args.whole_photo or args.mark_crops)  # full photo + proposed regions
    results: dict[str, dict[str, dict]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="markguard-bench-") as tmp:
        baseline = build_imagenet_artifact(Path(tmp) / "imagenet", fusion=_NO_FUSION)
        for name, es in sets.items():
            if not es.queries or not es.references:
                print(f"{name}: empty, skipped")
                continue
            results[name] = {}
            set_started = time.monotonic()
            plan = [("imagenet", baseline, None), ("trained", trained, None)]
            if as_served and trained.detector is not None:
                plan.append(("imagenet_on_trained_regions", baseline, trained))
            runs = []
            for label, artifact, proposals_from in plan:
                m = evaluate_artifact(artifact, es, device=args.device, use_fusion=False, progress=not args.quiet,
                                      regions=as_served, proposals_from=proposals_from)
                if name == GROZI_SET:
                    mixed_brand_claims(m)
                runs.append(m)
                results[name][label] = {"tag": artifact.tag, "queries": m["queries"], "references": m["references"],
                                        "regions_per_query": m["regions_per_query"],
                                        "claim_negatives": m.get("claim_negatives"),
                                        "claim_auc_other_brand": m.get("claim_vs_other_brand", {}).get("auc"),
                                        "claim_auc_same_brand": m.get("claim_vs_same_brand", {}).get("auc"),
                                        "claim_auc_by_transform": m.get("claim_auc_by_transform"),
                                        **{k: m.get(k) for k in (*COLUMNS, "recall_at_5", "map_at_r")}}
            brands = [q.brand for q in es.queries]
            for suffix, groups in (("", None), ("_by_brand", brands)):  # photos resampled; whole brands resampled
                ci = bootstrap_intervals(runs, len(es.queries), groups=groups)
                for k, (label, _, _) in enumerate(plan):
                    results[name][label][f"ci95{suffix}"] = {c: ci[c][k] for c in COLUMNS}
                results[name][f"trained_minus_imagenet_ci95{suffix}"] = {c: ci[f"difference_{c}"][1] for c in COLUMNS}
                if len(runs) == 3:  # the same paired draws: the trained embedder against ImageNet on the same regions
                    on_regions = bootstrap_intervals([runs[2], runs[1]], len(es.queries), groups=groups)
                    results[name][f"trained_minus_imagenet_on_trained_regions_ci95{suffix}"] = {
                        c: on_regions[f"difference_{c}"][1] for c in COLUMNS}
            results[name]["brands"] = len(set(brands))
            results[name]["seconds"] = round(time.monotonic() - set_started, 1)
            if as_served:
                images, marks = load_images(es.queries), [mark_box(q) for q in es.queries]
                found = {label: proposal_coverage(images, marks, max_regions=artifact.max_regions,
                                                  detector=artifact.load_detector(device=args.device))
                         for label, artifact in (("imagenet", baseline), ("trained", trained))}
                if found["trained"]:
                    results[name]["proposals_find_mark"] = found
    view = ("whole photos" if args.whole_photo else "true mark boxes (diagnostic)" if args.mark_crops
            else "full photo + region crops, as served")
    print(f"markguard bench embedder: ImageNet-only Lite0 vs {trained.tag}; queries as {view} "
          f"({time.monotonic() - started:.0f}s)")
    header = (f"{'set':<36} {'metric':<22} {'imagenet':>9} {'trained':>9} {'ratio':>7}  "
              f"{'trained - imagenet (95% CI: photos | brands resampled)':>46}")
    print(header)
    print("-" * len(header))

    def difference(a: float, b: float, by_photo: list | None, by_brand: list | None) -> str:
        if not by_photo:
            return ""
        text = f"{b - a:+.3f} [{by_photo[0]:+.3f}, {by_photo[1]:+.3f}]"
        return text + (f" | [{by_brand[0]:+.3f}, {by_brand[1]:+.3f}]" if by_brand else "")

    for name, r in results.items():
        for k in (*COLUMNS, "claim_auc_same_brand", "claim_auc_other_brand"):
            a, b = r["imagenet"][k], r["trained"][k]
            if a is None or b is None:
                continue
            ratio = b / a if a else float("nan")
            ci = difference(a, b, r["trained_minus_imagenet_ci95"].get(k), r["trained_minus_imagenet_ci95_by_brand"].get(k))
            print(f"{name:<36} {k:<22} {a:>9.3f} {b:>9.3f} {ratio:>6.2f}x  {ci:>46}")
        print(f"{'':<36} ({r['trained']['queries']} queries of {r['brands']} brands, {r['trained']['references']} "
              f"references, {r['trained']['regions_per_query']:.1f} regions per query; claim negatives: "
              f"{r['trained']['claim_negatives']}; {r['seconds']:.0f}s)")
        for k in COLUMNS:  # each model's own interval, whole brands resampled
            spans = {label: r[label]["ci95_by_brand"][k] for label in ("imagenet", "trained")}
            print(f"{'':<36} {k + ' 95% CI, brands':<22} " + "  ".join(
                f"{label} [{lo:.3f}, {hi:.3f}]" for label, (lo, hi) in spans.items()))
        if "imagenet_on_trained_regions" in r:
            for k in COLUMNS:
                a, b = r["imagenet_on_trained_regions"][k], r["trained"][k]
                ci = difference(a, b, r["trained_minus_imagenet_on_trained_regions_ci95"][k],
                                r["trained_minus_imagenet_on_trained_regions_ci95_by_brand"][k])
                print(f"{'  same regions (trained model):':<36} {k:<22} {a:>9.3f} {b:>9.3f} "
                      f"{b / a if a else float('nan'):>6.2f}x  {ci:>46}")
        by_transform = {label: r[label].get("claim_auc_by_transform") or {} for label in ("imagenet", "trained")}
        for t, b in sorted(by_transform["trained"].items()):
            a = by_transform["imagenet"].get(t, {}).get("auc", float("nan"))
            print(f"{'  claim AUC vs counterfeits by':<36} {t:<22} {a:>9.3f} {b['auc']:>9.3f}  ({b['count']} photos)")
        for label, p in r.get("proposals_find_mark", {}).items():
            print(f"{'':<36} ({label} regions overlap the true mark box at IoU >= {p['min_iou']:.1f} in "
                  f"{p['share_found']:.0%} of {p['photos']} photos; mean best IoU {p['mean_best_iou']:.2f})")
    if args.json:
        args.json.write_text(json.dumps(json_metrics(results), indent=2, sort_keys=True) + "\n")
    if args.card:
        card_path = trained.path / "card.json"
        card = json.loads(card_path.read_text())
        card["bench_embedder"] = {"command": "markguard bench embedder " + " ".join(argv if argv is not None else sys.argv[2:]),
                                  "queries_as": view, "results": json_metrics(results)}
        atomic_write_bytes(card_path, (json.dumps(card, indent=2, sort_keys=True) + "\n").encode())
        print(f"recorded in {card_path}")
    return 0
