"""Issue 21 item 2: the detector's box refined before the verifier reads it.

    python training/experiments/issue21/refine_box.py windows --out runs/s19/v [--photos 8000]
    python training/experiments/issue21/refine_box.py train --out runs/s19/v
    python training/experiments/issue21/refine_box.py eval --out runs/s19/v --heads l5r3,l5clean

The verifier reads the detector's best box grown 1.25x. With the true box it scores more: 0.025 more
with photo references (session 19's `refine`), 0.05-0.065 with the brand's logo (`clean_reference.py`).
Running the detector again on a window around its box did not help: it boxes a part of a mark that fills
its input. This trains a regressor for that one job: given a window around a box near the mark, where is
the mark in it.

`windows`: from `--photos` photos of the verifier's training build (train-split brands only), each mark
box jittered as a detector misses it (sides scaled 0.6-1.6x, centre moved up to 30% of a side, aspect
changed up to 1.35x either way), twice; the window is that box grown 2x, letterboxed onto 128 px, and the
target the true box in the window's canvas (0-1). Cached as the frozen trunk's stride-8 maps.

`train`: a small head (two 3x3 convolutions, one with stride 2, then a linear layer) regressing the four
sides, L1 loss, the best epoch by held-out windows (val brands of the eval build, the same jitter).

`eval`: on every val and test claim of the eval build, the detector's best box, its window, the refined
box: IoU with the true box before and after, and each verifier head of `verifier.py` (cached in OUT) reading
the refined box grown 1.25x (and the photo whole, as served), against the detector's box and the true box.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from markguard.serving.benchmarks.scoring import claim_auc_by_transform, synth_sample
from markguard.training.data import load_image, mark_box, read_items
from markguard.vision.regions import iou
from markguard.vision.verify import grown, letterbox

sys.path.insert(0, str(Path(__file__).parent))
from verifier import DEFAULT_MODEL, build_model, load_eval, predict, trunk_maps  # noqa: E402

SIDE = 128
GROW = 2.0  # the window: the box grown this much


def window_of(image: np.ndarray, box) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The window around `box` letterboxed onto the canvas, and the frame (x0, y0, s, ox, oy) that maps
    photo to canvas coordinates: x_canvas = (x - x0) * s + ox, with (x0, y0) the clipped window's origin."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = grown(box, GROW)
    x0, y0 = min(max(0, round(x0)), w - 1), min(max(0, round(y0)), h - 1)
    x1, y1 = min(w, max(x0 + 1, round(x1))), min(h, max(y0 + 1, round(y1)))
    s = min(SIDE / (y1 - y0), SIDE / (x1 - x0))
    nw, nh = min(SIDE, max(1, round((x1 - x0) * s))), min(SIDE, max(1, round((y1 - y0) * s)))
    ox, oy = (SIDE - nw) // 2, (SIDE - nh) // 2
    crop = letterbox(image, (x0, y0, x1, y1), SIDE)
    return crop, (x0, y0, s, ox, oy)


def to_canvas(box, frame) -> np.ndarray:
    x0, y0, s, ox, oy = frame
    bx0, by0, bx1, by1 = box
    return np.array([(bx0 - x0) * s + ox, (by0 - y0) * s + oy, (bx1 - x0) * s + ox, (by1 - y0) * s + oy]) / SIDE


def from_canvas(target: np.ndarray, frame) -> tuple[float, float, float, float]:
    x0, y0, s, ox, oy = frame
    cx0, cy0, cx1, cy1 = target * SIDE
    return ((cx0 - ox) / s + x0, (cy0 - oy) / s + y0, (cx1 - ox) / s + x0, (cy1 - oy) / s + y0)


def detector_like(box, rng: np.random.Generator):
    return grown(box, rng.uniform(0.6, 1.6), tuple(rng.uniform(-0.3, 0.3, 2)), float(np.exp(rng.uniform(-0.3, 0.3))))


def cmd_windows(args: argparse.Namespace) -> int:
    out: Path = args.out
    items = [i for i in read_items(args.train_build) if mark_box(i) is not None]
    rng = np.random.default_rng(0)
    items = [items[k] for k in rng.permutation(len(items))[: args.photos]]
    sets = {"train": items}
    _, _, val_claims = synth_sample(args.eval_build, "val", 0)
    sets["heldout"] = [q for q in val_claims if mark_box(q) is not None]
    for name, chosen in sets.items():
        crops, targets = [], []
        for item in tqdm(chosen, desc=f"{name} windows"):
            image, _ = load_image(item)
            true = mark_box(item)
            for _ in range(2 if name == "train" else 1):
                crop, frame = window_of(image, detector_like(true, rng))
                crops.append(crop)
                targets.append(to_canvas(true, frame))
        maps = trunk_maps(np.stack(crops), (5,))[5]
        np.savez(out / f"refine_{name}.npz", maps=maps, targets=np.array(targets, np.float32))
        print(f"{name}: {len(crops)} windows")
    return 0


class BoxHead(nn.Module):
    def __init__(self, channels: int = 40, hidden: int = 96) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.GroupNorm(8, hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1), nn.GroupNorm(8, hidden), nn.ReLU())
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(hidden * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(maps)) + torch.tensor([0.25, 0.25, 0.75, 0.75])  # a box grown 2x, centred


def regress(model: BoxHead, maps: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(maps[s : s + batch]).float()).numpy()
                               for s in range(0, len(maps), batch)])


def mean_iou(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean([iou(p, t) for p, t in zip(pred, target, strict=True)]))


def cmd_train(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    out: Path = args.out
    tr, ho = np.load(out / "refine_train.npz"), np.load(out / "refine_heldout.npz")
    maps, targets = tr["maps"], tr["targets"]
    model = BoxHead()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.epochs)
    rng = np.random.default_rng(0)
    base = mean_iou(np.tile([0.25, 0.25, 0.75, 0.75], (len(ho["targets"]), 1)), ho["targets"])
    print(f"held-out windows: the jittered box itself has mean IoU {base:.3f} with the mark")
    best, history = -1.0, []
    for epoch in range(1, args.epochs + 1):
        model.train()
        t = time.monotonic()
        losses = []
        order = rng.permutation(len(maps))
        for s in range(0, len(maps), args.batch):
            i = np.sort(order[s : s + args.batch])
            pred = model(torch.from_numpy(maps[i]).float())
            loss = F.l1_loss(pred, torch.from_numpy(targets[i]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        score = mean_iou(regress(model, ho["maps"]), ho["targets"])
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "heldout_mean_iou": score,
                        "seconds": round(time.monotonic() - t, 1)})
        print(json.dumps(history[-1]), flush=True)
        if score > best:
            best = score
            torch.save({"state": model.state_dict(), "epoch": epoch}, out / "refine_box.pt")
    (out / "refine_box_history.json").write_text(json.dumps({"jittered_box_mean_iou": base, "epochs": history}, indent=1))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from markguard.vision.artifact import load_artifact

    out: Path = args.out
    head = BoxHead()
    head.load_state_dict(torch.load(out / "refine_box.pt", weights_only=True)["state"])
    detector = load_artifact(args.model).load_detector()
    clean = np.load(out / "clean.npz") if (out / "clean.npz").is_file() else None
    results = {}
    for split in ("val", "test"):
        ev, meta = load_eval(out, split)
        cache = out / f"refine_eval_{split}.npz"
        _, _, claims = synth_sample(args.eval_build, split, 0)
        assert [str(q.row.image) for q in claims] == [c["image"] for c in meta["claims"]]
        if not cache.is_file():
            images = [load_image(q)[0] for q in tqdm(claims, desc=f"{split} photos")]
            found = []
            for image in tqdm(images, desc=f"{split} detector"):
                marks = detector.detect([image])[0]
                found.append(marks[0].box if marks else None)
            windows, frames = [], []
            for image, box in zip(images, found, strict=True):
                h, w = image.shape[:2]
                crop, frame = window_of(image, box if box is not None else (0, 0, w, h))
                windows.append(crop)
                frames.append(frame)
            refined_canvas = regress(head, trunk_maps(np.stack(windows), (5,))[5])
            refined = [from_canvas(r, f) for r, f in zip(refined_canvas, frames, strict=True)]
            crops = [letterbox(image, grown(box, 1.25), SIDE) for image, box in zip(images, refined, strict=True)]
            true = [mark_box(q) for q in claims]
            np.savez(cache, refined_l5=trunk_maps(np.stack(crops), (5,))[5],
                     found=np.array([b if b is not None else (np.nan,) * 4 for b in found], np.float64),
                     refined=np.array(refined), true=np.array([t if t is not None else (np.nan,) * 4 for t in true]))
        c = np.load(cache)
        has = ~np.isnan(c["found"][:, 0]) & ~np.isnan(c["true"][:, 0])
        before = [iou(f, t) for f, t in zip(c["found"][has], c["true"][has], strict=True)]
        after = [iou(r, t) for r, t in zip(c["refined"][has], c["true"][has], strict=True)]
        r = {"claims": len(claims), "detected": int(has.sum()),
             "iou_found_mean": float(np.mean(before)), "iou_refined_mean": float(np.mean(after)),
             "iou_found_at_0.5": float(np.mean(np.array(before) >= 0.5)),
             "iou_refined_at_0.5": float(np.mean(np.array(after) >= 0.5))}
        print(f"{split}: IoU with the mark, detector's box {r['iou_found_mean']:.3f} ({r['iou_found_at_0.5']:.2f} at "
              f"0.5), refined {r['iou_refined_mean']:.3f} ({r['iou_refined_at_0.5']:.2f})")
        genuine = np.array([x["genuine"] for x in meta["claims"]])
        transforms = np.array([x["transform"] or "" for x in meta["claims"]])
        brands = np.array([x["brand"] for x in meta["claims"]])
        for name in args.heads.split(","):
            ckpt = torch.load(out / f"{name}.pt", weights_only=True)
            a = ckpt["args"]
            if (a.get("tune_from") or a["level"]) != 5:
                continue
            model = build_model(a, 40)
            model.load_state_dict(ckpt["state"])
            refs = clean[f"{split}_l5"] if a.get("references") == "clean" else ev["refs_l5"]
            for reading, maps in (("detector", ev["found_l5"]), ("refined", c["refined_l5"]), ("true", ev["true_l5"])):
                logits = predict(model, refs, maps, ev["ref_index"])
                t = claim_auc_by_transform(-logits, genuine, transforms, brands, boot=args.boot)
                r[f"{name}_{reading}"] = t
                print(f"  {name:8s} {reading:9s} all {t['all']['auc']:.3f} [{t['all']['lo']:.3f}, {t['all']['hi']:.3f}] "
                      + " ".join(f"{k[:6]}={v['auc']:.2f}" for k, v in sorted(t.items()) if k != "all"), flush=True)
        results[split] = r
    (out / "refine_box_results.json").write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("windows")
    p.add_argument("--train-build", type=Path, default=Path("runs/s19/v/train-build"))
    p.add_argument("--photos", type=int, default=8000)
    p.set_defaults(func=cmd_windows)
    p = sub.add_parser("train")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--heads", default="l5r3,l5clean")
    p.add_argument("--boot", type=int, default=500)
    p.set_defaults(func=cmd_eval)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=Path("runs/s19/v"))
        p.add_argument("--eval-build", type=Path, default=Path("runs/issue21/synth-vt"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
