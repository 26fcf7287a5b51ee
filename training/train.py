"""`markguard train`: fine-tune Lite0 + a linear head with ArcFace, calibrate the fusion, write the artifact.

One linear loop (torchvision references style): data → the mark detector (`training.detector`; its
marks lead the eval queries' regions, as in serving) → cached frozen prefix → `train_one_epoch` /
`evaluate` per epoch (metrics JSON, checkpoint) → calibration → artifact, card, plots, BentoML.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from markguard.training.args import add_train_arguments
from markguard.training.artifacts import json_metrics, register_bentoml
from markguard.training.calibration import calibrate, stable_share, with_known_fake_copies
from markguard.training.card import argv_of, model_card, model_hash, state_hash
from markguard.training.config import load_config
from markguard.training.data import (
    EvalSet,
    Item,
    augment,
    class_key,
    ensure_grocery,
    ensure_synth,
    eval_transform,
    load_image,
    load_images,
    make_eval_set,
    manifest_sha256,
    mark_box,
    mark_view,
    read_items,
)
from markguard.training.detector import (
    build_detector,
    cache_features,
    detector_items,
    mark_coverage,
    train_detector,
)
from markguard.training.evaluation import (
    evaluate_embeddings,
    query_region_crops,
    split_blocks,
)
from markguard.training.losses import counterfeit_pair_loss, create_loss, similarity_distillation_loss
from markguard.training.model import SplitEmbedder, build_model, cache_prefix, embed_cached
from markguard.training.plots import plot_loss, plot_per_brand, plot_roc
from markguard.vision.artifact import write_artifact
from markguard.vision.detect import MarkDetector, encode_boxes
from markguard.vision.embed import get_backbone
from markguard.vision.scoring import Fusion

__all__ = ["get_args_parser", "main", "train_one_epoch", "evaluate"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the markguard embedder", add_help=add_help)
    add_train_arguments(p)
    return p


# -- data ----------------------------------------------------------------------------------------------------------


def _load_data(config: dict[str, Any]) -> tuple[list[Item], dict[str, EvalSet], dict[str, str]]:
    """Training items and the eval sets: `grocery_val` and `synth_val` (the builds' val splits), and
    `grocery_cal`, a share of grocery train photos held out of training (by a hash of the file name)
    so the fusion can be calibrated on real photos that grocery val's reported figures never saw."""
    d = config["data"]
    items: list[Item] = []
    hashes: dict[str, str] = {}
    eval_sets: dict[str, EvalSet] = {}
    if d["grocery"]:
        path = ensure_grocery(Path(d["grocery"]), source=d["grocery_source"])
        rows = read_items(path)
        hashes["grocery"] = manifest_sha256(path)
        train = [i for i in rows if i.row.split == "train"]
        held = [i for i in train if i.row.source != "iconic" and stable_share(i.row.image) < d["grocery_calibration_fraction"]]
        held_ids = {id(i) for i in held}
        items += [i for i in train if id(i) not in held_ids]
        eval_sets["grocery_val"] = make_eval_set(rows, split="val", name="grocery_val")
        if held:
            iconic = sorted((i for i in rows if i.row.source == "iconic"), key=lambda i: i.row.image)
            eval_sets["grocery_cal"] = EvalSet(name="grocery_cal", references=iconic, queries=held)
    if d["synth"]:
        path = ensure_synth(Path(d["synth"]), brands=d["synth_brands"], per_brand=d["synth_per_brand"],
                            size=d["synth_size"], seed=d["synth_seed"], paired_scenes=d.get("synth_paired_scenes", False))
        rows = read_items(path)
        hashes["synth"] = manifest_sha256(path)
        items += [i for i in rows if i.row.split == "train"]
        eval_sets["synth_val"] = make_eval_set(rows, split="val", name="synth_val")
    if d["max_train_images"]:
        rng = np.random.default_rng(config["seed"])
        keep = np.sort(rng.permutation(len(items))[: d["max_train_images"]])
        items = [items[i] for i in keep]
    if not items:
        raise ValueError("no training images: set data.grocery and/or data.synth")
    for name in [n for n, es in eval_sets.items() if not es.references or not es.queries]:
        print(f"markguard train: eval set {name} is empty (too few brands in its split); left out")
        del eval_sets[name]
    return items, eval_sets, hashes


def _fingerprint(config: dict[str, Any], *parts: Any) -> str:
    """What a cached part was computed from: the named config sections (strings) and any other data."""
    data = [config[p] if isinstance(p, str) else p for p in parts]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _views(item: Item, aug: dict[str, Any]) -> list[str]:
    """The cached views of a training photo: `eval` (serving's transform) first, then `augment`ed
    views, and for photos with a `mark` box, `mark` views (crops around it, as serving's regions see it)."""
    if item.row.source == "iconic":
        n, marks = int(aug["iconic_views"]), 0
    elif item.row.source == "synth":
        n, marks = int(aug["synth_views"]), int(aug["mark_views"])
    else:
        n, marks = int(aug["views"]), int(aug["mark_views"])
    if mark_box(item) is None:
        marks = 0
    return ["eval"] + ["augment"] * max(0, n - 1) + ["mark"] * marks


def _cache_train(split: SplitEmbedder, items: list[Item], config: dict[str, Any], device: str,
                 quiet: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefix features of every training view and each view's item index."""
    aug = config["augment"]
    jobs = [(i, v, kind) for i, item in enumerate(items) for v, kind in enumerate(_views(item, aug))]
    cfg = split.model.config

    def view(i: int, v: int, kind: str) -> np.ndarray:
        image, scale = load_image(items[i], max_side=max(512, 2 * cfg.input_size))
        rng = np.random.default_rng([config["seed"], i, v])
        if kind == "eval":
            return image
        if kind == "mark":
            return mark_view(image, mark_box(items[i], scale), rng=rng, params=aug)
        return augment(image, rng=rng, params=aug)

    def make(start: int, stop: int) -> torch.Tensor:
        return eval_transform([view(*job) for job in jobs[start:stop]], cfg)

    feats = cache_prefix(split, make, len(jobs), batch_size=config["eval"]["batch_size"], device=device,
                         desc="caching training views")
    return feats, torch.tensor([i for i, _, _ in jobs], dtype=torch.long)


def _cache_eval(split: SplitEmbedder, es: EvalSet, config: dict[str, Any], device: str,
                detector: MarkDetector | None) -> dict[str, torch.Tensor]:
    """Prefix features of the references (whole images) and of every query's regions, as serving crops
    them (`eval.max_regions`; full photo first, then the detector's marks), with `query_regions` =
    regions per query."""
    cfg = split.model.config
    # eval photos are few and small enough to hold as crops
    crops, counts = query_region_crops(load_images(es.queries), max_regions=int(config["eval"]["max_regions"]),
                                       detector=detector)
    refs = es.references
    return {
        "references": cache_prefix(split, lambda a, b: eval_transform(load_images(refs[a:b]), cfg), len(refs),
                                   batch_size=config["eval"]["batch_size"], device=device,
                                   desc=f"caching {es.name} references"),
        "queries": cache_prefix(split, lambda a, b: eval_transform(crops[a:b], cfg), len(crops),
                                batch_size=config["eval"]["batch_size"], device=device,
                                desc=f"caching {es.name} query regions"),
        "query_regions": torch.tensor(counts, dtype=torch.long),
    }


def _train_detector(config: dict[str, Any], items: list[Item], eval_sets: dict[str, EvalSet], hashes: dict[str, str],
                    run_dir: Path, quiet: bool) -> tuple[MarkDetector | None, dict[str, Any]]:
    """The mark detector (`detector` config section) trained on the training photos' `mark` boxes and
    measured on synth val's, or None when it is off or no training photo has a box. The trained head
    is kept in `detector.pt` with what it was trained from, so `--resume` reuses it."""
    params = config.get("detector", {})
    photos = detector_items(items)
    if not params.get("enabled") or not photos:
        if params.get("enabled"):
            print("markguard train: no training photo has a mark box; no mark detector")
        return None, {}
    device = config["device"]
    torch.manual_seed(config["seed"])
    detector = build_detector(params)
    path = run_dir / "detector.pt"
    key = _fingerprint(config, "detector", "seed", hashes, [str(i.path) for i in photos])
    saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
    if saved.get("fingerprint") == key:
        detector.load_state_dict(saved["model"])
        return detector.eval(), json.loads(saved["report"])
    t = time.monotonic()
    features, sizes = cache_features(detector, photos, device=device, desc="detector: caching training photos",
                                     quiet=quiet)
    targets = encode_boxes([mark_box(i) for i in photos], sizes, input_size=detector.config.input_size,
                           stride=detector.config.stride)
    history = train_detector(detector, features, targets, params=params, seed=config["seed"], device=device, quiet=quiet)
    del features
    report: dict[str, Any] = {"train_photos": len(photos), "history": history}
    val = detector_items(eval_sets["synth_val"].queries) if "synth_val" in eval_sets else []
    if val:
        features, sizes = cache_features(detector.cpu(), val, desc="detector: caching synth val", quiet=quiet)
        report["synth_val"] = mark_coverage(detector, features, sizes, [mark_box(i) for i in val])
    report["seconds"] = round(time.monotonic() - t, 1)
    detector.cpu().eval()
    torch.save({"fingerprint": key, "model": detector.state_dict(), "report": json.dumps(report)}, path)
    print(f"markguard train: mark detector trained on {len(photos)} photos ({report['seconds']:.0f}s); "
          f"synth val: {report.get('synth_val')}")
    return detector, report


# -- the loop --------------------------------------------------------------------------------------------------------


class PairBatches:
    """Batches for `counterfeit_pair_loss`: `brands` brands that have both genuine and counterfeit
    views, `views` of each kind per brand, drawn with their own seeded RNG (an epoch's ArcFace order
    stays the same with pairs on or off)."""

    def __init__(self, items: Sequence[Any], owner: torch.Tensor, *, brands: int, views: int, seed: int) -> None:
        by_brand: dict[str, tuple[list[int], list[int]]] = {}
        for view, item in enumerate(owner.tolist()):
            genuine, fake = by_brand.setdefault(items[item].brand, ([], []))
            (genuine if items[item].genuine else fake).append(view)
        self.groups = [(np.array(g), np.array(f)) for g, f in by_brand.values() if len(g) >= 2 and f]
        self.brands, self.views, self.seed = min(brands, len(self.groups)), views, seed

    def epoch(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def draw(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(view indices, group per view, genuine per view)."""
        idx, group, genuine = [], [], []
        for k, g in enumerate(rng.choice(len(self.groups), self.brands, replace=False)):
            for kind, pool in ((True, self.groups[g][0]), (False, self.groups[g][1])):
                chosen = rng.choice(pool, min(self.views, len(pool)), replace=False)
                idx += chosen.tolist()
                group += [k] * len(chosen)
                genuine += [kind] * len(chosen)
        return torch.tensor(idx), torch.tensor(group), torch.tensor(genuine)


def train_one_epoch(split: SplitEmbedder, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, feats: torch.Tensor, labels: torch.Tensor, *,
                    batch_size: int, epoch: int, generator: torch.Generator, device: str, quiet: bool,
                    pairs: PairBatches | None = None, pair_weight: float = 0.0, pair_margin: float = 0.0,
                    teacher: torch.Tensor | None = None, distill_weight: float = 0.0, distill_tau: float = 0.1) -> float:
    """One pass over the cached views in a seeded random order; with `pairs`, each step also adds
    `pair_weight` × `counterfeit_pair_loss` on a batch of same-brand genuine and counterfeit views; with
    `teacher` (a vector per cached view), `distill_weight` × `similarity_distillation_loss` of the batch's
    embeddings to the teacher's vectors of the same views."""
    split.train()
    loss_fn.train()
    order = torch.randperm(len(feats), generator=generator)
    pair_rng = pairs.epoch(epoch) if pairs is not None else None
    total, count = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch}", unit="batch", disable=quiet or None,
               leave=False)
    for start in bar:
        idx = order[start : start + batch_size]
        x, y = feats[idx].to(device), labels[idx].to(device)
        z = split.suffix(x)
        loss = loss_fn(z, y)
        if teacher is not None and distill_weight > 0 and len(idx) > 1:
            loss = loss + distill_weight * similarity_distillation_loss(z, teacher[idx].to(device).float(), tau=distill_tau)
        if pairs is not None:
            view, group, genuine = pairs.draw(pair_rng)
            loss = loss + pair_weight * counterfeit_pair_loss(split.suffix(feats[view].to(device)), group.to(device),
                                                              genuine.to(device), margin=pair_margin)
        if not torch.isfinite(loss):  # NaN guard: never step on a non-finite loss
            raise FloatingPointError(f"epoch {epoch}: non-finite loss {loss.item()} at batch {start // batch_size}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
        bar.set_postfix(loss=f"{total / count:.3f}")
    return total / max(count, 1)


def evaluate(embed, eval_sets: dict[str, EvalSet], caches: dict[str, dict[str, torch.Tensor]], *,  # noqa: ANN001
             fusion: Fusion | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Metrics per eval set; `embed(features) -> unit vectors` (the trained suffix, or the baseline)."""
    out = {}
    for name, es in eval_sets.items():
        c = caches[name]
        refs, queries = embed(c["references"]), split_blocks(embed(c["queries"]), c["query_regions"].tolist())
        out[name] = evaluate_embeddings(es, refs, queries, fusion=fusion, seed=seed)
    return out


def _baseline_embed(split: SplitEmbedder, device: str):  # type: ignore[no-untyped-def]
    """The ImageNet-only embedder (pooled trunk, no head) on cached features: the epoch-0 reference."""

    @torch.no_grad()
    def embed(f: torch.Tensor) -> np.ndarray:
        split.eval()
        return F.normalize(split.pooled_suffix(f.to(device)), dim=1).float().cpu().numpy()

    return embed


@torch.no_grad()
def imagenet_teacher(split: SplitEmbedder, feats: torch.Tensor, *, device: str, batch_size: int = 256) -> torch.Tensor:
    """Unit ImageNet pooled features (the frozen backbone's suffix, no head) of every cached view, float16 on
    CPU: the teacher of `loss.distill_weight`. Taken from the backbone's pretrained weights, so call it
    before training moves them (on --resume the ImageNet trunk is rebuilt for it)."""
    entry_state = get_backbone(split.model.config.architecture).pretrained_state()
    trunk = copy.deepcopy(split.model.backbone).cpu()
    trunk.load_state_dict(entry_state, strict=True)
    trunk.eval()
    out = []
    for start in range(0, len(feats), batch_size):
        f = feats[start : start + batch_size].float()
        pooled = f if split.trainable_blocks < 0 else trunk.forward_from(f, split.split).mean(dim=(2, 3))
        out.append(F.normalize(pooled, dim=1).half())
    return torch.cat(out) if out else torch.empty(0)


def _short(metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ("recall_at_1", "recall_at_5", "map_at_r", "claim_auc")
    return {n: {k: round(float(m[k]), 4) for k in keys if k in m} for n, m in metrics.items()}


def _checkpoint(path: Path, *, split: SplitEmbedder, loss_fn: torch.nn.Module, optimizer, scheduler,  # noqa: ANN001
                epoch: int, config: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """A plain dict of tensors and primitives (loadable with `weights_only=True`), written atomically."""
    state = {
        "model": split.model.state_dict(),
        "loss": loss_fn.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "config": json.loads(json.dumps(config)),
        "history": json.loads(json.dumps(history)),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


# -- main ---------------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.resume:
        run_dir = Path(args.resume)
        config = json.loads((run_dir / "config.json").read_text())
        if args.device:
            config["device"] = args.device
    else:
        config = load_config(args.config, args.overrides)
        if args.device:
            config["device"] = args.device
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out or Path("runs") / f"train-{stamp}")
        run_dir.mkdir(parents=True, exist_ok=False)
        (run_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    device = config["device"]
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("markguard train: --device cuda but no CUDA device is available")
    torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(config["seed"])
    quiet = bool(args.quiet)

    items, eval_sets, hashes = _load_data(config)
    eval_sets = with_known_fake_copies(eval_sets, config, run_dir)
    per_transform = config["loss"].get("counterfeit_classes", "transform") == "transform"  # checked by load_config
    classes = sorted({class_key(i.row, per_transform=per_transform) for i in items})
    class_of = {c: k for k, c in enumerate(classes)}
    m = config["model"]
    model = build_model(architecture=m["architecture"], input_size=m["input_size"], embedding_dim=m["embedding_dim"],
                        seed=config["seed"]).to(device)
    split = SplitEmbedder(model, trainable_blocks=m["trainable_blocks"])
    print(f"markguard train: {len(items)} training images, {len(classes)} classes, eval sets "
          f"{ {n: (len(e.references), len(e.queries)) for n, e in eval_sets.items()} }, run folder {run_dir}")

    detector, detector_report = _train_detector(config, items, eval_sets, hashes, run_dir, quiet)
    detector_key = state_hash(detector.state_dict()) if detector is not None else ""

    # the frozen prefix is run once; the cache survives --resume (a part whose inputs changed is recomputed)
    cache_path = run_dir / "feature_cache.pt"
    t0 = time.monotonic()
    cache = torch.load(cache_path, map_location="cpu", weights_only=True) if cache_path.is_file() else {}
    previous, fresh = sorted(cache), set()
    train_key = _fingerprint(config, "model", "augment", "seed", hashes, [(str(i.path), i.crop) for i in items])
    if cache.get("fingerprint/train") != train_key:
        cache["train"], cache["owner"] = _cache_train(split, items, config, device, quiet)
        cache["fingerprint/train"] = train_key
        fresh |= {"train", "owner"}
    for n, es in eval_sets.items():
        key = _fingerprint(config, "model", "eval", hashes, [detector_key],
                           [(str(i.path), i.crop) for i in [*es.references, *es.queries]])
        if cache.get(f"fingerprint/eval/{n}") != key:
            cache.update({f"eval/{n}/{k}": v for k, v in _cache_eval(split, es, config, device, detector).items()})
            cache[f"fingerprint/eval/{n}"] = key
            fresh |= {f"eval/{n}/references", f"eval/{n}/queries", f"eval/{n}/query_regions"}
    if fresh:
        torch.save(cache, cache_path)
    reused = [k for k in previous if k not in fresh and k != "owner" and not k.startswith("fingerprint/")]
    cache_seconds = time.monotonic() - t0
    feats = cache["train"].to(device)
    labels = torch.tensor([class_of[class_key(items[int(i)].row, per_transform=per_transform)] for i in cache["owner"]], dtype=torch.long)
    eval_caches = {n: {k: cache[f"eval/{n}/{k}"] for k in ("references", "queries", "query_regions")} for n in eval_sets}

    o = config["optim"]
    loss_fn = create_loss(config["loss"]["name"], num_classes=len(classes), embedding_dim=m["embedding_dim"],
                          margin=config["loss"]["margin"], scale=config["loss"]["scale"], seed=config["seed"]).to(device)
    head_params = list(model.head.parameters()) + list(loss_fn.parameters())
    trunk_params = [p for p in split.trainable_parameters() if all(p is not h for h in head_params)]
    optimizer = torch.optim.AdamW([{"params": trunk_params, "lr": o["lr"]}, {"params": head_params, "lr": o["head_lr"]}],
                                  weight_decay=o["weight_decay"])
    steps_per_epoch = -(-len(feats) // o["batch_size"])
    total_steps, warmup = o["epochs"] * steps_per_epoch, o["warmup_epochs"] * steps_per_epoch

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup)))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history: list[dict[str, Any]] = []
    start_epoch = 1
    ckpt_path = run_dir / "checkpoint.pt"
    if args.resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
        print(f"markguard train: resumed from epoch {state['epoch']}")
    else:
        baseline = evaluate(_baseline_embed(split, device), eval_sets, eval_caches, seed=config["seed"])
        history.append({"epoch": 0, "model": "imagenet-baseline", "val": json_metrics(baseline)})
        print(f"epoch 0 (ImageNet baseline): {_short(baseline)}")

    def embed(f: torch.Tensor) -> np.ndarray:
        return embed_cached(split, f, device=device)

    lc = config["loss"]
    pairs = (PairBatches(items, cache["owner"], brands=int(lc.get("pair_brands", 8)), views=int(lc.get("pair_views", 4)),
                         seed=config["seed"]) if lc.get("pair_weight", 0.0) > 0 else None)
    if pairs is not None and not pairs.groups:
        raise SystemExit("markguard train: loss.pair_weight needs brands with 2+ genuine and 1+ counterfeit training views")
    teacher = imagenet_teacher(split, feats, device=device) if lc.get("distill_weight", 0.0) > 0 else None
    generator = torch.Generator().manual_seed(config["seed"])
    for _ in range(1, start_epoch):  # the same shuffles as an uninterrupted run
        torch.randperm(len(feats), generator=generator)
    for epoch in range(start_epoch, o["epochs"] + 1):
        t = time.monotonic()
        loss = train_one_epoch(split, loss_fn, optimizer, scheduler, feats, labels, batch_size=o["batch_size"],
                               epoch=epoch, generator=generator, device=device, quiet=quiet, pairs=pairs,
                               pair_weight=lc.get("pair_weight", 0.0), pair_margin=lc.get("pair_margin", 0.0),
                               teacher=teacher, distill_weight=lc.get("distill_weight", 0.0),
                               distill_tau=lc.get("distill_tau", 0.1))
        metrics = evaluate(embed, eval_sets, eval_caches, seed=config["seed"])
        history.append({"epoch": epoch, "train_loss": loss, "seconds": round(time.monotonic() - t, 2),
                        "lr": optimizer.param_groups[0]["lr"], "val": json_metrics(metrics)})
        print(f"epoch {epoch}: loss {loss:.4f} {_short(metrics)} ({time.monotonic() - t:.1f}s)")
        (run_dir / "metrics.json").write_text(json.dumps(history, indent=2) + "\n")
        _checkpoint(ckpt_path, split=split, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, epoch=epoch,
                    config=config, history=history)

    finish(split=split, config=config, run_dir=run_dir, eval_sets=eval_sets, eval_caches=eval_caches,
           history=history, hashes=hashes, classes=len(classes), train_images=len(items),
           seconds={"cache": round(cache_seconds, 1), "total": round(time.monotonic() - started, 1)},
           cache_reused=reused, args=args, detector=detector, detector_report=detector_report)
    return 0


def finish(*, split: SplitEmbedder, config: dict[str, Any], run_dir: Path, eval_sets: dict[str, EvalSet],
           eval_caches: dict[str, dict[str, torch.Tensor]], history: list[dict[str, Any]], hashes: dict[str, str],
           classes: int, train_images: int, seconds: dict[str, float], cache_reused: list[str],
           args: argparse.Namespace, detector: MarkDetector | None = None,
           detector_report: dict[str, Any] | None = None) -> None:
    """Calibrate the fusion on the validation claims, evaluate with it, write artifact, card, plots, BentoML."""
    cal = calibrate(split=split, config=config, run_dir=run_dir, eval_sets=eval_sets, eval_caches=eval_caches,
                    quiet=bool(args.quiet))
    spec = cal.spec
    fusion = Fusion(spec)
    metrics = {n: evaluate_embeddings(es, *cal.vectors[n], fusion=fusion, claims=cal.claim_sets[n]) for n, es in eval_sets.items()}
    baseline = history[0]["val"] if history and history[0]["epoch"] == 0 else {}
    print(f"markguard train: fusion calibrated on {cal.calibrate_on}",
          json.dumps({k: spec[k] for k in ("review_at", "takedown_at", "match_threshold")}))

    model = split.model.cpu()
    sha8 = model_hash(model.state_dict(), detector=detector.state_dict() if detector is not None else None,
                      fusion=spec)
    tag = f"{config['tag_prefix']}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{sha8}"
    card = model_card(tag=tag, config=config, command="markguard train " + " ".join(argv_of(args)), calibration=cal,
                      metrics=metrics, baseline=baseline, hashes=hashes, classes=classes, train_images=train_images,
                      eval_sets=eval_sets, seconds=seconds, cache_reused=cache_reused, detector_report=detector_report
                      if detector is not None else None)
    if (run_dir / "artifact").exists():  # a resumed run that had finished: the artifact is written again
        shutil.rmtree(run_dir / "artifact")
    artifact = write_artifact(run_dir / "artifact", state_dict=model.state_dict(), embedder=model.config,
                              fusion=spec, card=card, detector=detector)
    (run_dir / "metrics_final.json").write_text(json.dumps(card["metrics"], indent=2, sort_keys=True) + "\n")
    plot_loss(history, run_dir / "loss.png")
    for n, m in metrics.items():
        for curve, value in plot_roc(m.get("_roc", {}), run_dir / f"roc_{n}.png",
                                     title=f"{n}: claim verification").items():
            print(f"roc_{n}.png: {curve}: AUC {value:.4f}")
        plot_per_brand(m["per_brand"], run_dir / f"per_brand_{n}.png", title=f"{n}: recall@1 per brand")
    if not args.no_bentoml:
        import os

        home = args.bentoml_home or (Path(os.environ["BENTOML_HOME"]) if "BENTOML_HOME" in os.environ else run_dir / "bentoml")
        print(f"markguard train: BentoML model {register_bentoml(artifact, bentoml_home=home)}"
              f" in {home}")
    print(f"markguard train: artifact {artifact.path} (tag {tag}) in {seconds['total'] / 60:.1f} min")
    for n, m in card["metrics"].items():
        print(f"  {n}: " + ", ".join(f"{k}={m[k]:.3f}" for k in ("recall_at_1", "recall_at_5", "map_at_r", "claim_auc",
                                                                   "risk_auc") if k in m))
