"""Issue 21 item 5: the brand's own logo as the verifier's reference, where the yardstick enrols a photo's crop.

    python training/experiments/issue21/clean_reference.py maps --out runs/s19/v [--train-build runs/s19/v/train-build]
    python training/experiments/issue21/clean_reference.py probe --out runs/s19/v

`bench scoring --synth` enrols each held-out brand's first genuine photo cut to its mark: a 256 px photo's
crop, with the scene's perspective, light, blur and JPEG. A brand enrols its logo. Both sides of a claim
then vary with the photo, and the verifier must tell an edit from that variation twice over.

`maps`: the genuine mark of every brand of `verifier.py crops`'s builds (`datasets.synth`'s rendering at
its `MARK_HEIGHT`, flattened onto white), padded by 12.5% a side (the 1.25x growth a photo's reference
crop gets) and letterboxed onto the 128 px canvas; cached as the frozen trunk's maps beside the photo
references' (`clean.npz`: `train_l*`, `val_l*`, `test_l*`, and the brands of each, in `verifier.py`'s
order) and as pixels (`clean_pixels.npz`).

`probe`: the shipped verifier (as served: the model's verifier files) on every val and test claim of the
eval build, the detector's box, against the photo reference and against the logo. Claim AUC per transform.
`verifier.py train --references clean` then trains a head on logo references.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from markguard.datasets.marks import render_mark
from markguard.datasets.synth import MARK_HEIGHT, _flat, pick_brands
from markguard.serving.benchmarks.scoring import claim_auc_by_transform
from markguard.vision.verify import letterbox

sys.path.insert(0, str(Path(__file__).parent))
from verifier import DEFAULT_MODEL, load_eval, trunk_maps  # noqa: E402

PAD = 1.25  # a photo reference is its mark box grown 1.25x


def logo_crop(brand: str, specs: dict) -> np.ndarray:
    """The brand's genuine mark on white, padded as a reference crop is, letterboxed to 128 px."""
    mark = _flat(render_mark(specs[brand], height=MARK_HEIGHT))
    h, w = mark.shape[:2]
    ph, pw = round(h * (PAD - 1) / 2), round(w * (PAD - 1) / 2)
    padded = np.pad(mark, ((ph, ph), (pw, pw), (0, 0)), constant_values=255)
    return letterbox(padded, (0, 0, padded.shape[1], padded.shape[0]), 128)


def cmd_maps(args: argparse.Namespace) -> int:
    out: Path = args.out
    specs = {spec.brand: spec for _, spec in pick_brands(args.brands, seed=0)}
    train_brands = sorted({m["brand"] for m in json.loads((out / "train_meta.json").read_text())})
    lists = {"train": train_brands}
    for split in ("val", "test"):
        lists[split] = json.loads((out / f"{split}_meta.json").read_text())["brands"]
    levels = tuple(int(v) for v in args.levels.split(","))
    arrays, pixels = {}, {}
    for split, brands in lists.items():
        missing = [b for b in brands if b not in specs]
        if missing:
            raise SystemExit(f"{split}: {len(missing)} brands not among the first {args.brands} picked, e.g. {missing[:3]}")
        crops = np.stack([logo_crop(b, specs) for b in brands])
        pixels[split] = crops
        for k, v in trunk_maps(crops, levels).items():
            arrays[f"{split}_l{k}"] = v
        arrays[f"{split}_brands"] = np.array(brands)
        print(f"{split}: {len(brands)} logos")
    np.savez(out / "clean.npz", **arrays)
    np.savez_compressed(out / "clean_pixels.npz", **pixels)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from markguard.vision.artifact import load_artifact

    out: Path = args.out
    verifier = load_artifact(args.model).load_verifier()
    clean = np.load(out / "clean_pixels.npz")
    results = {}
    for split in ("val", "test"):
        ev, meta = load_eval(out, split)
        pix = np.load(out / f"{split}_pixels.npz")
        claims = meta["claims"]
        genuine = np.array([c["genuine"] for c in claims])
        transforms = np.array([c["transform"] or "" for c in claims])
        brands = np.array([c["brand"] for c in claims])
        found = verifier.maps(list(pix["found"]))
        scores = {}
        for name, refs in (("photo_reference", pix["refs"]), ("logo_reference", clean[split])):
            ref_maps = verifier.maps(list(refs))
            logits = np.array([verifier.logits(ref_maps[r : r + 1], found[q])[0]
                               for q, r in enumerate(ev["ref_index"])])
            scores[name] = claim_auc_by_transform(-logits, genuine, transforms, brands, boot=args.boot)
            t = scores[name]
            print(f"{split} {name:16s} all {t['all']['auc']:.3f} [{t['all']['lo']:.3f}, {t['all']['hi']:.3f}] "
                  + " ".join(f"{k[:6]}={v['auc']:.2f}" for k, v in sorted(t.items()) if k != "all"), flush=True)
        results[split] = scores
    (out / "clean_probe.json").write_text(json.dumps(results, indent=1))
    return 0


def lowest(logits: np.ndarray, owner: np.ndarray, mask: np.ndarray, *, whole: np.ndarray, claims: int) -> np.ndarray:
    """Per claim, the lowest logit of its readings in `mask`; the photo whole's (`whole`) where it has none."""
    score = np.full(claims, np.inf)
    np.minimum.at(score, owner[mask], logits[mask])
    fallback = np.full(claims, np.inf)
    np.minimum.at(fallback, owner[whole], logits[whole])
    return np.where(np.isinf(score), fallback, score)


def cmd_scales(args: argparse.Namespace) -> int:
    """A head trained on logos (`verifier.py train --references clean --name NAME`) reading each claim's mark
    at several growths of the detector's best box, every detector box, and the photo whole: which reading,
    or the lowest logit over which set, tells counterfeits best. Crops cached in `scales_{split}.npz`."""
    from verifier import build_model, predict

    from markguard.serving.benchmarks.scoring import synth_sample
    from markguard.training.data import load_image
    from markguard.vision.artifact import load_artifact
    from markguard.vision.verify import grown

    out: Path = args.out
    ckpt = torch.load(out / f"{args.name}.pt", weights_only=True)
    a = ckpt["args"]
    level = a.get("tune_from") or a["level"]
    detector = load_artifact(args.model).load_detector()
    clean = np.load(out / "clean.npz")
    growths = (1.1, 1.25, 1.6, 2.0)
    results = {}
    for split in ("val", "test"):
        ev, meta = load_eval(out, split)
        cache = out / f"scales_{split}.npz"
        if not cache.is_file():
            _, _, claims = synth_sample(args.eval_build, split, 0)
            assert [str(q.row.image) for q in claims] == [c["image"] for c in meta["claims"]]
            crops, owner, kind = [], [], []  # kind: growth index of the best box, 10 + rank of another box, 99 whole
            for n, item in enumerate(claims):
                image, _ = load_image(item)
                h, w = image.shape[:2]
                found = detector.detect([image])[0]
                for g, factor in enumerate(growths if found else ()):
                    crops.append(letterbox(image, grown(found[0].box, factor), 128))
                    owner.append(n)
                    kind.append(g)
                for rank, d in enumerate(found[1:], start=1):
                    crops.append(letterbox(image, grown(d.box, 1.25), 128))
                    owner.append(n)
                    kind.append(10 + rank)
                crops.append(letterbox(image, (0, 0, w, h), 128))
                owner.append(n)
                kind.append(99)
            np.savez(cache, maps=trunk_maps(np.stack(crops), (level,))[level], owner=np.array(owner), kind=np.array(kind))
        c = np.load(cache)
        maps, owner, kind = c["maps"], c["owner"], c["kind"]
        model = build_model(a, maps.shape[1])
        model.load_state_dict(ckpt["state"])
        refs = clean[f"{split}_l{level}"] if a.get("references") == "clean" else ev[f"refs_l{level}"]
        logits = predict(model, refs, maps, ev["ref_index"][owner])
        claims = meta["claims"]
        genuine = np.array([x["genuine"] for x in claims])
        transforms = np.array([x["transform"] or "" for x in claims])
        brands = np.array([x["brand"] for x in claims])


        readings = {f"best box x{f}": kind == g for g, f in enumerate(growths)}
        readings["served (best x1.25, whole)"] = (kind == 1) | (kind == 99)
        readings["best x1.25 and x1.6"] = (kind == 1) | (kind == 2)
        readings["best, all growths"] = kind < 10
        readings["all boxes x1.25, whole"] = (kind == 1) | (kind >= 10)
        readings["everything"] = np.ones_like(kind, dtype=bool)
        results[split] = {}
        for name, mask in readings.items():
            t = claim_auc_by_transform(-lowest(logits, owner, mask, whole=kind == 99, claims=len(claims)), genuine, transforms, brands, boot=args.boot)
            results[split][name] = t
            print(f"{split} {name:28s} all {t['all']['auc']:.3f} [{t['all']['lo']:.3f}, {t['all']['hi']:.3f}] "
                  + " ".join(f"{k[:6]}={v['auc']:.2f}" for k, v in sorted(t.items()) if k != "all"), flush=True)
    (out / f"{args.name}_scales.json").write_text(json.dumps(results, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(required=True)
    p = sub.add_parser("maps")
    p.add_argument("--brands", type=int, default=2000, help="the training build's --brands (seed 0)")
    p.add_argument("--levels", default="4,5")
    p.set_defaults(func=cmd_maps)
    p = sub.add_parser("probe")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--boot", type=int, default=500)
    p.set_defaults(func=cmd_probe)
    p = sub.add_parser("scales")
    p.add_argument("--name", required=True)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--eval-build", type=Path, default=Path("runs/issue21/synth-vt"))
    p.add_argument("--boot", type=int, default=500)
    p.set_defaults(func=cmd_scales)
    for p in sub.choices.values():
        p.add_argument("--out", type=Path, default=Path("runs/s19/v"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
