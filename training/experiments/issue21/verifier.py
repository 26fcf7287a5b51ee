"""Issue 21 item 5: a learned mark verifier, the reference's mark against the claim photo's mark.

    python training/experiments/issue21/verifier.py crops TRAIN_BUILD EVAL_BUILD [--out runs/issue21/verifier]
    python training/experiments/issue21/verifier.py train [--out ...] [--level 5] [--epochs 30]
    python training/experiments/issue21/verifier.py eval  [--out ...] [--boot 1000]
    python training/experiments/issue21/verifier.py export --out runs/issue21/verifier8 --name t4 --dest DIR

The global embedding sees a brand's mark as a whole and cannot tell a genuine mark from one with an
element moved, mirrored or removed, a letter changed or strokes thickened (held-out claim AUC 0.54-0.57).
This asks whether a small head comparing the two marks cell by cell can.

`crops`: crops (letterboxed onto a `--canvas`, 128x128 px by default, aspect kept) of a synthetic train build's photos around
their `mark` box: per genuine photo one enrolled crop (the box grown 1.25x, as `make_eval_set` enrols a
reference) and two jittered views (box grown 1.05-1.6x, centre shifted up to 12% of a side: a detector's
errors), per counterfeit two jittered views. For the EVAL_BUILD's val and test brands (`synth_sample`,
every brand): the reference as `bench embedder` enrols it, and each claim photo's mark found as served
(the model's detector, best box grown 1.25x like `vision.regions`; the whole photo when it finds none)
and, as an upper bound, its true box grown 1.25x. Then the frozen ImageNet Lite0 trunk's maps after
`--level` stages (3: stride 4, 24 channels, 32x32; 5: stride 8, 40 channels, 16x16; 11: stride 16, 112 channels, 8x8) are cached as
float16, and for the claims the shipped embedder's cosine between the reference and the found region.

`train`: the head (`Verifier`) on pairs drawn afresh each epoch, one reference and one view per training
brand and draw: a view of another genuine photo of the brand (label 0) or of one of its counterfeits
(label 1). Chosen by val brands' claim AUC; `eval` reports the test brands (never seen: a brand's split
is a hash of its name) with brand-resampled intervals, per transform, alone and combined with the
embedder's cosine by a logistic fit on val.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from markguard.serving.benchmarks.scoring import claim_auc_by_transform, resample_brands, synth_sample
from markguard.training.data import load_image, mark_box, read_items
from markguard.training.metrics import roc_auc
from markguard.vision.embed.backbone import create_backbone
from markguard.vision.verify import MarkHead as Verifier
from markguard.vision.verify import grown
from markguard.vision.verify import letterbox as canvas_letterbox

SIZE = (128, 128)  # canvas height, width: `crops --canvas`
MEAN, STD = 127.0, 128.0  # EfficientNet-Lite's input normalisation, in pixel units
DEFAULT_MODEL = Path("serving/default_model")


def letterbox(image: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int] | None = None) -> np.ndarray:
    """`vision.verify.letterbox` onto this run's canvas (`crops --canvas`; square in serving)."""
    return canvas_letterbox(image, box, size or SIZE)


def jittered(box, rng: np.random.Generator):
    return grown(box, rng.uniform(1.05, 1.6), tuple(rng.uniform(-0.12, 0.12, 2)), rng.uniform(0.9, 1.1))


# --- features ---------------------------------------------------------------------------------------------


def trunk(level: int) -> nn.Module:
    net = create_backbone("efficientnet_lite0", pretrained=True).truncate(level).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@torch.no_grad()
def trunk_maps(crops: np.ndarray, levels: tuple[int, ...], batch: int = 64) -> dict[int, np.ndarray]:
    net = trunk(max(levels))
    out: dict[int, list[np.ndarray]] = {k: [] for k in levels}
    for start in tqdm(range(0, len(crops), batch), desc="trunk", leave=False):
        x = torch.from_numpy(crops[start : start + batch]).permute(0, 3, 1, 2).float().sub(MEAN).div(STD)
        x = net.stem(x)
        for k, stage in enumerate(net.stages[: max(levels)], start=1):
            x = stage(x)
            if k in levels:
                out[k].append(x.half().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


# --- crops ------------------------------------------------------------------------------------------------


def train_crops(build: Path, seed: int = 0) -> dict:
    items = [i for i in read_items(build) if i.row.split == "train" and mark_box(i) is not None]
    crops, photo, kind = [], [], []  # kind: 0 enrolled reference, 1 view
    meta = []
    for n, item in enumerate(tqdm(items, desc="train crops")):
        image, _ = load_image(item)
        box = mark_box(item)
        rng = np.random.default_rng([seed, n])
        if item.genuine:
            crops.append(letterbox(image, grown(box, 1.25)))
            photo.append(n)
            kind.append(0)
        for _ in range(2):
            crops.append(letterbox(image, jittered(box, rng)))
            photo.append(n)
            kind.append(1)
        meta.append({"brand": item.brand, "genuine": item.genuine, "transform": item.row.transform})
    return {"crops": np.stack(crops), "photo": np.array(photo), "kind": np.array(kind), "meta": meta}


def eval_crops(build: Path, split: str, model: Path) -> dict:
    from markguard.vision.artifact import load_artifact

    refs, brands, claims = synth_sample(build, split, 0)
    artifact = load_artifact(model)
    detector = artifact.load_detector()
    ref_images = [load_image(refs[b])[0] for b in brands]
    ref_crops = [letterbox(image, (0, 0, image.shape[1], image.shape[0])) for image in ref_images]
    found, found_raw, true, meta = [], [], [], []
    for item in tqdm(claims, desc=f"{split} claims"):
        image, _ = load_image(item)
        h, w = image.shape[:2]
        marks = detector.detect([image])[0]
        box = grown(marks[0].box, 1.25) if marks else (0, 0, w, h)
        found.append(letterbox(image, box))
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        found_raw.append(np.ascontiguousarray(image[max(0, y0) : max(y0 + 1, y1), max(0, x0) : max(x0 + 1, x1)]))
        tb = mark_box(item)
        true.append(letterbox(image, grown(tb, 1.25)) if tb is not None else found[-1])
        meta.append({"brand": item.brand, "genuine": item.genuine, "transform": item.row.transform,
                     "image": str(item.row.image), "detected": bool(marks)})
    return {"brands": brands, "refs": np.stack(ref_crops), "found": np.stack(found), "true": np.stack(true),
            "meta": meta, "ref_images": ref_images, "found_raw": found_raw}


@torch.no_grad()
def embed_cosines(model: Path, refs: list[np.ndarray], queries: list[np.ndarray], ref_index: np.ndarray) -> np.ndarray:
    """The shipped embedder's cosine between each claim's found region and its brand's reference (the
    crops as cut, as serving embeds them)."""
    from markguard.vision.artifact import load_artifact
    from markguard.vision.embed.run import embed_images

    embedder = load_artifact(model).load_embedder(fuse=True)
    r = embed_images(embedder, refs)
    q = embed_images(embedder, queries, progress=True)
    return np.sum(q * r[ref_index], axis=1)


def cmd_crops(args: argparse.Namespace) -> int:
    global SIZE
    SIZE = tuple(int(v) for v in args.canvas.split("x"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    levels = tuple(int(v) for v in args.levels.split(","))
    t = time.monotonic()
    tr = train_crops(args.train_build)
    maps = trunk_maps(tr["crops"], levels)
    np.savez(out / "train.npz", photo=tr["photo"], kind=tr["kind"], **{f"l{k}": v for k, v in maps.items()})
    (out / "train_meta.json").write_text(json.dumps(tr["meta"]))
    print(f"train: {len(tr['meta'])} photos, {len(tr['crops'])} crops, {time.monotonic() - t:.0f} s")
    for split in ("val", "test"):
        t = time.monotonic()
        ev = eval_crops(args.eval_build, split, args.model)
        ref_index = np.array([ev["brands"].index(m["brand"]) for m in ev["meta"]])
        arrays = {"ref_index": ref_index, "cosine": embed_cosines(args.model, ev["ref_images"], ev["found_raw"], ref_index)}
        for name in ("refs", "found", "true"):
            arrays.update({f"{name}_l{k}": v for k, v in trunk_maps(ev[name], levels).items()})
        np.savez(out / f"{split}.npz", **arrays)
        np.savez_compressed(out / f"{split}_pixels.npz", refs=ev["refs"], found=ev["found"], true=ev["true"])
        (out / f"{split}_meta.json").write_text(json.dumps({"brands": ev["brands"], "claims": ev["meta"]}))
        print(f"{split}: {len(ev['brands'])} brands, {len(ev['meta'])} claims, {time.monotonic() - t:.0f} s")
    return 0


# --- the head ---------------------------------------------------------------------------------------------


class TunedVerifier(nn.Module):
    """ImageNet trunk stages `start`..`level`-1, fine-tuned (batch norm statistics frozen), then `Verifier`."""

    def __init__(self, start: int, level: int, channels: int, **head: int) -> None:
        super().__init__()
        net = create_backbone("efficientnet_lite0", pretrained=True)
        self.blocks = nn.Sequential(*net.stages[start:level])
        self.head = Verifier(channels, **head)

    def train(self, mode: bool = True) -> TunedVerifier:
        super().train(mode)
        for m in self.blocks.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, ref: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(ref), self.blocks(query))


def build_model(a: dict, channels: int) -> nn.Module:
    head = {"dim": a["dim"], "radius": a["radius"], "hidden": a["hidden"]}
    if a.get("tune_from"):
        return TunedVerifier(a["tune_from"], a["level"], LEVEL_CHANNELS[a["level"]], **head)
    return Verifier(channels, **head)


LEVEL_CHANNELS = {3: 24, 5: 40, 11: 112}


def sample_pairs(photo_brand: list[str], genuine: np.ndarray, photo: np.ndarray, kind: np.ndarray,
                 rng: np.random.Generator, per_brand: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    refs_of = defaultdict(list)
    views_of = defaultdict(lambda: ([], []))  # brand -> (genuine views, counterfeit views) as (crop, photo)
    for c, (p, k) in enumerate(zip(photo, kind, strict=True)):
        b = photo_brand[p]
        if k == 0:
            refs_of[b].append((c, p))
        else:
            views_of[b][0 if genuine[p] else 1].append((c, p))
    ref_idx, query_idx, labels = [], [], []
    for b, refs in refs_of.items():
        gviews, cviews = views_of[b]
        for _ in range(per_brand):
            rc, rp = refs[rng.integers(len(refs))]
            label = int(rng.random() < 0.5) if cviews else 0
            pool = cviews if label else [v for v in gviews if v[1] != rp]
            if not pool:
                continue
            ref_idx.append(rc)
            query_idx.append(pool[rng.integers(len(pool))][0])
            labels.append(label)
    return np.array(ref_idx), np.array(query_idx), np.array(labels, dtype=np.float32)


def sample_logo_pairs(photo_brand: list[str], genuine: np.ndarray, photo: np.ndarray, logo_brands: list[str],
                      rng: np.random.Generator, per_brand: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`sample_pairs` with the brand's logo as the reference (`clean_reference.py maps`): each draw a crop
    of any genuine photo of the brand (label 0) or of one of its counterfeits (1)."""
    at = {b: i for i, b in enumerate(logo_brands)}
    views_of = defaultdict(lambda: ([], []))
    for c, p in enumerate(photo):
        views_of[photo_brand[p]][0 if genuine[p] else 1].append(c)
    ref_idx, query_idx, labels = [], [], []
    for b, (gviews, cviews) in views_of.items():
        for _ in range(per_brand):
            label = int(rng.random() < 0.5) if cviews else 0
            pool = cviews if label else gviews
            if not pool:
                continue
            ref_idx.append(at[b])
            query_idx.append(pool[rng.integers(len(pool))])
            labels.append(label)
    return np.array(ref_idx), np.array(query_idx), np.array(labels, dtype=np.float32)


def eval_refs(out: Path, split: str, ev: dict, key: str, references: str) -> np.ndarray:
    """The eval split's reference maps: the photo crops `crops` cached, or the brands' logos (`clean.npz`)."""
    if references == "photo":
        return ev[f"refs_{key}"]
    clean = np.load(out / "clean.npz")
    assert list(clean[f"{split}_brands"]) == json.loads((out / f"{split}_meta.json").read_text())["brands"]
    return clean[f"{split}_{key}"]


@torch.no_grad()
def predict(model: Verifier, refs: np.ndarray, queries: np.ndarray, ref_index: np.ndarray, batch: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for s in range(0, len(queries), batch):
        q = torch.from_numpy(queries[s : s + batch]).float()
        r = torch.from_numpy(refs[ref_index[s : s + batch]]).float()
        out.append(model(r, q).numpy())
    return np.concatenate(out)


def load_eval(out: Path, split: str) -> tuple[dict, dict]:
    return dict(np.load(out / f"{split}.npz")), json.loads((out / f"{split}_meta.json").read_text())


def auc_of(scores: np.ndarray, meta: dict) -> float:
    genuine = np.array([c["genuine"] for c in meta["claims"]])
    return roc_auc(-scores, genuine)  # higher logit: counterfeit; claim AUC ranks genuine higher


def cmd_grocery(args: argparse.Namespace) -> int:
    """Real-photo pairs from grocery train (the photos `markguard train` trains on: `grocery_cal`'s share
    and val left out): per product its catalogue (iconic) photo whole as the reference; per photo two
    views, the detector's best box grown 1.25x and the photo whole (as `MarkVerifier.query_map` reads it).
    Cached as the frozen trunk's maps after `--level` stages in OUT/grocery.npz."""
    from markguard.training.calibration import stable_share
    from markguard.training.config import load_config
    from markguard.vision.artifact import load_artifact

    config = load_config()
    items = read_items(Path(config["data"]["grocery"]))
    share = config["data"]["grocery_calibration_fraction"]
    iconic = sorted((i for i in items if i.row.source == "iconic"), key=lambda i: i.row.image)
    photos = [i for i in items if i.row.split == "train" and i.row.source != "iconic"
              and stable_share(i.row.image) >= share]
    # the selection of `training.train._load_data`, which holds `grocery_cal` out of training
    products = [(i.brand, i.product) for i in iconic]
    detector = load_artifact(args.model).load_detector()
    refs = [letterbox(image, (0, 0, image.shape[1], image.shape[0])) for image in (load_image(i)[0] for i in iconic)]
    views, view_photo, photo_product = [], [], []
    for n, item in enumerate(tqdm(photos, desc="grocery photos")):
        image = load_image(item)[0]
        h, w = image.shape[:2]
        marks = detector.detect([image])[0]
        if marks:
            views.append(letterbox(image, grown(marks[0].box, 1.25)))
            view_photo.append(n)
        views.append(letterbox(image, (0, 0, w, h)))
        view_photo.append(n)
        photo_product.append(products.index((item.brand, item.product)))
    level = args.level
    np.savez(args.out / "grocery.npz", refs=trunk_maps(np.stack(refs), (level,))[level],
             views=trunk_maps(np.stack(views), (level,))[level], view_photo=np.array(view_photo),
             photo_product=np.array(photo_product), product_brand=np.array([b for b, _ in products]))
    print(f"grocery: {len(iconic)} products, {len(photos)} photos, {len(views)} views")
    return 0


def grocery_pairs(g: dict, rng: np.random.Generator, per_photo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per grocery photo and draw: one of its views against its own product's reference (0) or another
    product's, of its brand where the brand has another (1)."""
    brand = g["product_brand"]
    views_of = defaultdict(list)
    for v, p in enumerate(g["view_photo"]):
        views_of[int(p)].append(v)
    refs, queries, labels = [], [], []
    for p, product in enumerate(g["photo_product"]):
        for _ in range(per_photo):
            label = int(rng.random() < 0.5)
            if label:
                same = [o for o in range(len(brand)) if brand[o] == brand[product] and o != product]
                pool = same or [o for o in range(len(brand)) if o != product]
                ref = pool[rng.integers(len(pool))]
            else:
                ref = product
            refs.append(ref)
            queries.append(views_of[p][rng.integers(len(views_of[p]))])
            labels.append(label)
    return np.array(refs), np.array(queries), np.array(labels, dtype=np.float32)


def cmd_train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    out: Path = args.out
    data = np.load(out / "train.npz")
    photo, kind = data["photo"], data["kind"]  # an npz member is read from disk at every access
    key = f"l{args.tune_from or args.level}"
    maps = data[key]
    meta = json.loads((out / "train_meta.json").read_text())
    brand = [m["brand"] for m in meta]
    genuine = np.array([m["genuine"] for m in meta])
    val, val_meta = load_eval(out, "val")
    val_refs = eval_refs(out, "val", val, key, args.references)
    if args.references == "clean":
        clean = np.load(out / "clean.npz")
        logo_maps, logo_brands = clean[f"train_{key}"], list(clean["train_brands"])
    model = build_model(vars(args), maps.shape[1])
    if args.init:
        model.load_state_dict(torch.load(out / f"{args.init}.pt", weights_only=True)["state"])
    grocery = dict(np.load(out / "grocery.npz")) if args.grocery else None
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("blocks.")], "lr": args.lr}]
    if args.tune_from:
        groups.append({"params": list(model.blocks.parameters()), "lr": args.lr * args.trunk_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    rng = np.random.default_rng(args.seed)
    best, history = -1.0, []
    name = args.name or f"l{args.level}"
    for epoch in range(1, args.epochs + 1):
        model.train()
        if args.references == "clean":
            r, q, y = sample_logo_pairs(brand, genuine, photo, logo_brands, rng, args.per_brand)
            ref_maps = logo_maps
        else:
            r, q, y = sample_pairs(brand, genuine, photo, kind, rng, args.per_brand)
            ref_maps = maps
        order = rng.permutation(len(y))
        losses = []
        t = time.monotonic()
        for s in range(0, len(order), args.batch):
            i = order[s : s + args.batch]
            rb, qb = torch.from_numpy(ref_maps[r[i]]).float(), torch.from_numpy(maps[q[i]]).float()
            loss = F.binary_cross_entropy_with_logits(model(rb, qb), torch.from_numpy(y[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if grocery is not None:  # then the real-photo pairs, interleaved in batches of their own
            gr, gq, gy = grocery_pairs(grocery, rng, args.grocery)
            gorder = rng.permutation(len(gy))
            for s in range(0, len(gorder), args.batch):
                i = gorder[s : s + args.batch]
                rb = torch.from_numpy(grocery["refs"][gr[i]]).float()
                qb = torch.from_numpy(grocery["views"][gq[i]]).float()
                loss = F.binary_cross_entropy_with_logits(model(rb, qb), torch.from_numpy(gy[i]))
                opt.zero_grad()
                loss.backward()
                opt.step()
        sched.step()
        scores = predict(model, val_refs, val[f"found_{key}"], val["ref_index"])
        auc = auc_of(scores, val_meta)
        oracle = auc_of(predict(model, val_refs, val[f"true_{key}"], val["ref_index"]), val_meta)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_auc_found": auc, "val_auc_true": oracle,
                        "seconds": round(time.monotonic() - t, 1)})
        print(json.dumps(history[-1]), flush=True)
        if auc > best:
            best = auc
            torch.save({"state": model.state_dict(), "args": {k: v for k, v in vars(args).items() if k != "func" and k != "out"},
                        "epoch": epoch}, out / f"{name}.pt")
    (out / f"{name}_history.json").write_text(json.dumps(history, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    out: Path = args.out
    ckpt = torch.load(out / f"{args.name}.pt", weights_only=True)
    a = ckpt["args"]
    level = a.get("tune_from") or a["level"]
    results = {"checkpoint": args.name, "epoch": ckpt["epoch"]}
    per_split = {}
    for split in ("val", "test"):
        ev, meta = load_eval(out, split)
        refs = eval_refs(out, split, ev, f"l{level}", a.get("references", "photo"))
        model = build_model(a, refs.shape[1])
        model.load_state_dict(ckpt["state"])
        per_split[split] = {
            "found": predict(model, refs, ev[f"found_l{level}"], ev["ref_index"]),
            "true": predict(model, refs, ev[f"true_l{level}"], ev["ref_index"]),
            "cosine": ev["cosine"], "meta": meta,
        }
    # cosine + verifier, a logistic fit on val (standardised by val)
    from sklearn.linear_model import LogisticRegression

    v = per_split["val"]
    gv = np.array([c["genuine"] for c in v["meta"]["claims"]])
    xv = np.stack([v["cosine"], -v["found"]], 1)
    mu, sd = xv.mean(0), xv.std(0)
    fit = LogisticRegression().fit((xv - mu) / sd, gv)
    results["combination"] = {"coef": fit.coef_[0].tolist(), "intercept": float(fit.intercept_[0])}
    for split, s in per_split.items():
        claims = s["meta"]["claims"]
        genuine = np.array([c["genuine"] for c in claims])
        transforms = np.array([c["transform"] or "" for c in claims])
        brands = np.array([c["brand"] for c in claims])
        combo = fit.decision_function((np.stack([s["cosine"], -s["found"]], 1) - mu) / sd)
        results[split] = {
            "claims": int(len(claims)), "brands": len(set(brands)), "genuine": int(genuine.sum()),
            "detected": float(np.mean([c["detected"] for c in claims])),
            **{name: claim_auc_by_transform(score, genuine, transforms, brands, boot=args.boot)
               for name, score in [("embedder_cosine", s["cosine"]), ("verifier_found", -s["found"]),
                                   ("verifier_true_box", -s["true"]), ("cosine_plus_verifier", combo)]},
        }
        diff = paired_diff(combo, s["cosine"], genuine, brands, args.boot)
        results[split]["combination_minus_cosine"] = diff
        # by the counterfeit edit's strength (the build's `strength`, 0.3-1.0, in thirds): is the edit's size the limit?
        strength = np.array([c["strength"] or 0.0 for c in strengths(args.eval_build, claims)])
        results[split]["by_strength"] = {
            f"[{lo}, {hi})": {"counterfeits": int(((strength >= lo) & (strength < hi) & ~genuine).sum()),
                              **{name: round(roc_auc(score[m], genuine[m]), 4)
                                 for name, score in [("embedder_cosine", s["cosine"]), ("verifier_found", -s["found"]),
                                                     ("verifier_true_box", -s["true"])]
                                 for m in [genuine | ((strength >= lo) & (strength < hi))]}}
            for lo, hi in ((0.3, 0.53), (0.53, 0.77), (0.77, 1.01))}
    path = out / f"{args.name}_results.json"
    path.write_text(json.dumps(results, indent=1))
    plot(results["test"], out / f"{args.name}_auc_by_transform.png")
    for split in ("val", "test"):
        print(f"== {split}: {results[split]['brands']} brands, {results[split]['claims']} claims")
        for name in ("embedder_cosine", "verifier_found", "verifier_true_box", "cosine_plus_verifier"):
            table = results[split][name]
            worst = min((r["auc"], t) for t, r in table.items() if t != "all")
            print(f"  {name:22s} all {table['all']['auc']:.3f} [{table['all']['lo']:.3f}, {table['all']['hi']:.3f}]  "
                  f"worst {worst[1]} {worst[0]:.3f}  "
                  + " ".join(f"{t[:6]}={r['auc']:.2f}" for t, r in sorted(table.items()) if t != "all"))
        print(f"  combination - cosine: {results[split]['combination_minus_cosine']}")
        print(f"  by strength: {results[split]['by_strength']}")
    print(f"wrote {path}")
    return 0


def cmd_grozi(args: argparse.Namespace) -> int:
    """The verifier on real photos: GroZi-120 claims as `bench scoring --grozi` scored them (its
    `.claims.jsonl`), each query frame against its claimed product's reference frames, whole (the frames
    are cut around the product). Reports the verifier's claim AUC (its lowest logit over the product's
    references) beside the full path's risk, and how many genuine claims it ranks as a counterfeit would."""
    from markguard.vision.decode import read_image

    out: Path = args.out
    ckpt = torch.load(out / f"{args.name}.pt", weights_only=True)
    a = ckpt["args"]
    level = a.get("tune_from") or a["level"]
    build = args.grozi
    rows = [json.loads(line) for line in (build / "manifest.jsonl").read_text().splitlines()]
    brand_of = {r["product"]: r["brand"] for r in rows}
    refs = [r for r in rows if r["split"] == "ref"]
    claims = [json.loads(line) for line in args.claims.read_text().splitlines()]
    images = sorted({c["image"] for c in claims} | {r["image"] for r in refs})
    pixels = []
    for name in tqdm(images, desc="frames"):
        image = read_image(build / name)
        pixels.append(letterbox(image, (0, 0, image.shape[1], image.shape[0])))
    maps = trunk_maps(np.stack(pixels), (level,))[level]
    at = {name: i for i, name in enumerate(images)}
    model = build_model(a, maps.shape[1])
    model.load_state_dict(ckpt["state"])
    refs_of: dict[str, list[int]] = defaultdict(list)
    for r in refs:
        refs_of[r["product"]].append(at[r["image"]])
    pair_ref, pair_query, pair_claim = [], [], []
    for n, c in enumerate(claims):
        for i in refs_of[c["claimed"]]:
            pair_ref.append(i)
            pair_query.append(at[c["image"]])
            pair_claim.append(n)
    logits = predict(model, maps, maps[np.array(pair_query)], np.array(pair_ref))
    verifier = np.full(len(claims), np.inf)
    np.minimum.at(verifier, np.array(pair_claim), logits)
    genuine = np.array([c["genuine"] for c in claims])
    risk = np.array([c["risk"] for c in claims])
    brands = np.array([brand_of[c["product"]] for c in claims])
    table = resample_brands({
        "risk_claim_auc": lambda i: roc_auc(-risk[i], genuine[i]),
        "verifier_claim_auc": lambda i: roc_auc(-verifier[i], genuine[i]),
    }, brands, boot=args.boot)
    # on held-out synthetic val, the logit above which 5% of genuine claims lie; how many real genuine claims pass it
    val, val_meta = load_eval(out, "val")
    val_scores = predict(model, val[f"refs_l{level}"], val[f"found_l{level}"], val["ref_index"])
    val_genuine = np.array([c["genuine"] for c in val_meta["claims"]])
    cut = float(np.quantile(val_scores[val_genuine], 0.95))
    result = {"claims": len(claims), "genuine": int(genuine.sum()), **table,
              "synth_val_genuine_p95_logit": cut,
              "grozi_genuine_above_cut": float(np.mean(verifier[genuine] > cut)),
              "grozi_false_above_cut": float(np.mean(verifier[~genuine] > cut))}
    # diagnostic only (a weight must never be chosen on the yardstick): does the verifier rank what the risk does not?
    logit = np.log(np.clip(risk, 1e-6, 1 - 1e-6) / np.clip(1 - risk, 1e-6, 1))
    result["risk_plus_w_verifier_auc"] = {str(w): round(roc_auc(-(logit + w * verifier), genuine), 4)
                                          for w in (0.0, 0.25, 0.5, 1.0, 2.0)}
    (out / f"{args.name}_grozi.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def cmd_regions(args: argparse.Namespace) -> int:
    """The verifier over every region the detector proposes (its boxes, at most 3, grown 1.25x) and the whole
    photo, the claim's logit the lowest of them (the region that looks most like the reference), against the
    detector's best box alone."""
    from markguard.vision.artifact import load_artifact

    out: Path = args.out
    ckpt = torch.load(out / f"{args.name}.pt", weights_only=True)
    a = ckpt["args"]
    level = a.get("tune_from") or a["level"]
    detector = load_artifact(args.model).load_detector()
    results = {}
    for split in ("val", "test"):
        ev, meta = load_eval(out, split)
        model = build_model(a, ev[f"refs_l{level}"].shape[1])
        model.load_state_dict(ckpt["state"])
        refs, brands, claims = synth_sample(args.eval_build, split, 0)
        assert [str(q.row.image) for q in claims] == [c["image"] for c in meta["claims"]]
        crops, owner = [], []
        for n, item in enumerate(tqdm(claims, desc=f"{split} regions")):
            image, _ = load_image(item)
            boxes = [grown(d.box, 1.25) for d in detector.detect([image])[0]]
            for box in [*boxes, (0, 0, image.shape[1], image.shape[0])]:
                crops.append(letterbox(image, box))
                owner.append(n)
        maps = trunk_maps(np.stack(crops), (level,))[level]
        owner = np.array(owner)
        logits = predict(model, ev[f"refs_l{level}"], maps, ev["ref_index"][owner])
        lowest = np.full(len(claims), np.inf)
        np.minimum.at(lowest, owner, logits)
        best_box = predict(model, ev[f"refs_l{level}"], ev[f"found_l{level}"], ev["ref_index"])
        genuine = np.array([c["genuine"] for c in meta["claims"]])
        transforms = np.array([c["transform"] or "" for c in meta["claims"]])
        brand = np.array([c["brand"] for c in meta["claims"]])
        results[split] = {"regions_per_claim": round(len(owner) / len(claims), 2),
                          "best_box": claim_auc_by_transform(-best_box, genuine, transforms, brand, boot=args.boot),
                          "lowest_over_regions": claim_auc_by_transform(-lowest, genuine, transforms, brand, boot=args.boot),
                          "lowest_minus_best_box": paired_diff(-lowest, -best_box, genuine, brand, args.boot)}
        r = results[split]
        print(f"{split}: {r['regions_per_claim']} regions a claim; best box {r['best_box']['all']}, "
              f"lowest over regions {r['lowest_over_regions']['all']}, difference {r['lowest_minus_best_box']}")
    (out / f"{args.name}_regions.json").write_text(json.dumps(results, indent=1))
    return 0


def strengths(build: Path, claims: list[dict]) -> list[dict]:
    """Each claim's manifest row fields `strength` (None for genuine photos), by image path."""
    rows = {json.loads(line)["image"]: json.loads(line) for line in (build / "manifest.jsonl").read_text().splitlines()}
    return [{"strength": rows[c["image"]].get("strength")} for c in claims]


def plot(test: dict, path: Path) -> None:
    """Claim AUC on the test brands, all counterfeits and per transform, each score with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["embedder_cosine", "verifier_found", "verifier_true_box", "cosine_plus_verifier"]
    cols = ["all", *sorted(t for t in test["embedder_cosine"] if t != "all")]
    fig, ax = plt.subplots(figsize=(13, 4.5))
    width = 0.8 / len(names)
    x = np.arange(len(cols))
    for k, name in enumerate(names):
        auc = np.array([test[name][c]["auc"] for c in cols])
        err = np.array([[auc[i] - test[name][c]["lo"], test[name][c]["hi"] - auc[i]] for i, c in enumerate(cols)]).T
        ax.bar(x + k * width, auc, width, yerr=err, label=name, capsize=1.5)
    ax.axhline(0.5, color="k", lw=0.5)
    ax.axhline(0.55, color="r", lw=0.5, ls="--")
    ax.axhline(0.65, color="g", lw=0.5, ls="--")
    ax.set_xticks(x + 0.4 - width / 2, cols, rotation=30, ha="right")
    ax.set_ylim(0.3, 1.0)
    ax.set_ylabel(f"claim AUC, {test['brands']} held-out synth brands")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def paired_diff(a: np.ndarray, b: np.ndarray, genuine: np.ndarray, brands: np.ndarray, boot: int) -> dict:
    """Claim AUC of `a` minus that of `b` on the same claims, brands resampled (`resample_brands`)."""
    return resample_brands({"diff": lambda i: roc_auc(a[i], genuine[i]) - roc_auc(b[i], genuine[i])},
                           brands, boot=boot)["diff"]


def cmd_export(args: argparse.Namespace) -> int:
    """A checkpoint as a mark verifier folder (`verifier.json`, `verifier.safetensors`: the ImageNet trunk
    with the checkpoint's tuned stages, and the head) that `markguard calibrate --verifier` adds to a model.
    Checks that the exported verifier, run on the val crops' pixels, gives the checkpoint's logits."""
    import dataclasses

    from safetensors.torch import save_file

    from markguard.vision.artifact import read_verifier
    from markguard.vision.verify import MarkVerifier, VerifierConfig
    from markguard.vision.weights import sha256_file

    out: Path = args.out
    ckpt = torch.load(out / f"{args.name}.pt", weights_only=True)
    a = ckpt["args"]
    if SIZE != (128, 128):
        raise SystemExit("export: serving letterboxes onto a square canvas")
    start = a.get("tune_from") or a["level"]
    config = VerifierConfig(mean=(MEAN / 255,) * 3, std=(STD / 255,) * 3, trunk_blocks=start,
                            tuned_blocks=a["level"] - start, dim=a["dim"], radius=a["radius"], hidden=a["hidden"])
    verifier = MarkVerifier(config)
    imagenet = create_backbone("efficientnet_lite0", pretrained=True).state_dict()
    state = {f"trunk.{k}": v for k, v in imagenet.items() if f"trunk.{k}" in verifier.state_dict()}
    for k, v in ckpt["state"].items():
        if k.startswith("blocks."):  # TunedVerifier: the tuned stages, numbered from `tune_from`
            n, rest = k[len("blocks."):].split(".", 1)
            state[f"trunk._blocks.{start + int(n)}.{rest}"] = v
        else:
            state[k if k.startswith("head.") else f"head.{k}"] = v
    verifier.load_state_dict(state, strict=True)
    dest: Path = args.dest
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in verifier.state_dict().items()}, str(dest / config.weights_file))
    config = dataclasses.replace(config, weights_sha256=sha256_file(dest / config.weights_file))
    (dest / "verifier.json").write_text(config.to_json())
    exported = read_verifier(dest)
    # what it was trained on and what it scored: `markguard calibrate --verifier` puts this on the model's card
    results_file, grozi = out / f"{args.name}_results.json", out / f"{args.name}_grozi.json"
    test = json.loads(results_file.read_text())["test"] if results_file.is_file() else None  # `eval` writes it
    card = {
        "made_by": f"python training/experiments/issue21/verifier.py train --out {out} --name {args.name} "
                   + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in a.items() if k not in ("name",) and v),
        "exported_by": f"python training/experiments/issue21/verifier.py export --out {out} --name {args.name} "
                       f"--dest {dest}",
        "training_data": "synthetic pairs of train-split brands only (`markguard datasets synth --brands 2000 "
                         "--per-brand 8 --splits train`); epoch chosen on val brands' claim AUC",
        "epoch": ckpt["epoch"],
        "held_out_test": None if test is None else {
            "brands": test["brands"], "claims": test["claims"], "claim_auc_found_box": test["verifier_found"],
            "claim_auc_true_box": test["verifier_true_box"]["all"], "embedder_cosine": test["embedder_cosine"]["all"],
            "cosine_plus_verifier_minus_cosine": test["combination_minus_cosine"]},
        "grozi": json.loads(grozi.read_text()) if grozi.is_file() else None,
    }
    (dest / "verifier_card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    # the same logits from pixels as the checkpoint gave from its cached float16 maps
    val, _ = load_eval(out, "val")
    pixels = np.load(out / "val_pixels.npz")
    n = 64
    model = build_model(a, val[f"refs_l{start}"].shape[1])
    model.load_state_dict(ckpt["state"])
    cached = predict(model, val[f"refs_l{start}"], val[f"found_l{start}"][:n], val["ref_index"][:n])
    fresh = np.array([exported.logits(exported.maps([pixels["refs"][r]]), exported.maps([pixels["found"][q]])[0])[0]
                      for q, r in enumerate(val["ref_index"][:n])])
    print(f"export: {dest} (sha256 {config.weights_sha256[:12]}); {n} val claims, largest logit difference "
          f"from the checkpoint's {np.abs(fresh - cached).max():.4f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("crops")
    p.add_argument("train_build", type=Path)
    p.add_argument("eval_build", type=Path)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--canvas", default="128x128", help="crop canvas, HEIGHTxWIDTH px")
    p.add_argument("--levels", default="5,11", help="trunk maps to cache: after these many stages")
    p.set_defaults(func=cmd_crops)
    p = sub.add_parser("train")
    p.add_argument("--level", type=int, default=5, choices=(3, 5, 11))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--per-brand", type=int, default=8)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--radius", type=int, default=3)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="")
    p.add_argument("--tune-from", type=int, default=0, help="fine-tune the trunk's stages from this one (cached maps)")
    p.add_argument("--trunk-lr-scale", type=float, default=0.1)
    p.add_argument("--init", default="", help="start from this checkpoint of OUT")
    p.add_argument("--grocery", type=int, default=0, help="grocery pairs per photo and epoch (`grocery` first)")
    p.add_argument("--references", choices=("photo", "clean"), default="photo",
                   help="photo: a genuine photo's crop, as the yardstick enrols; clean: the brand's logo "
                        "(`clean_reference.py maps` first)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("grocery")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--level", type=int, default=4)
    p.set_defaults(func=cmd_grocery)
    p = sub.add_parser("eval")
    p.add_argument("--name", default="l5")
    p.add_argument("--boot", type=int, default=1000)
    p.add_argument("--eval-build", type=Path, default=Path("runs/issue21/synth-vt"), help="the build `crops` scored")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("regions")
    p.add_argument("--name", default="l5")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--eval-build", type=Path, default=Path("runs/issue21/synth-vt"))
    p.add_argument("--boot", type=int, default=1000)
    p.set_defaults(func=cmd_regions)
    p = sub.add_parser("grozi")
    p.add_argument("--name", default="l5")
    p.add_argument("--grozi", type=Path, default=Path("runs/grozi-build"))
    p.add_argument("--claims", type=Path, default=Path("runs/issue21/grozi-claims.claims.jsonl"))
    p.add_argument("--boot", type=int, default=1000)
    p.set_defaults(func=cmd_grozi)
    p = sub.add_parser("export")
    p.add_argument("--name", default="t4")
    p.add_argument("--dest", type=Path, required=True, help="the verifier folder to write")
    p.set_defaults(func=cmd_export)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=Path("runs/issue21/verifier"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
