"""Issue 21: what bounds the held-out synthetic counterfeit figure (0.581 shipped, 0.65 asked)? Three probes.

    python training/experiments/issue21/verifier_limits.py weight runs/s18/synth-test40-gated.claims.jsonl \
        runs/s18/grozi-gated.claims.jsonl
    python training/experiments/issue21/verifier_limits.py aspect runs/issue21/synth-vt
    python training/experiments/issue21/verifier_limits.py znorm runs/issue21/synth-vt [--views 12]
    python training/experiments/issue21/verifier_limits.py refine runs/issue21/synth-vt
    python training/experiments/issue21/verifier_limits.py reference-cost runs/issue21/synth-vt

`weight`: the fused risk of `bench scoring` claims (a model with the mark verifier) with `mark_mismatch`'s
contribution to the log-odds scaled by k, the rest as served. k = 1 is the shipped fusion; a large k is
the verifier alone. So it tells whether the fusion under-weighs the verifier or the verifier is the limit.
Diagnostic only: a weight is fitted on the calibration sets, never chosen on a yardstick.

`aspect`: aspect distortion (the mark stretched or squeezed by 10-40%) is the transform the verifier and
the embedding do worst on (0.46). Does the mark's box tell it? Per claim of `bench scoring --synth`'s
val and test brands (`synth_sample`, every brand), |log| of the ratio of the claim's mark box aspect to
the reference's: the true `mark` boxes (an upper bound), and the shipped detector's best box on the photo
against its best box on the reference framed as `vision.verify.reference_mark_iou` frames it.

`znorm`: score normalisation per reference. Some marks give a high mismatch logit even to genuine photos;
pooled over brands that costs AUC. Each reference is photographed `--views` times (`derived_view`: the
perspective, turn, light, blur, noise and JPEG that listing photos show, on a plain ground) and the
verifier read on those views as on a listing photo; the claim's logit minus their mean, and divided by
their spread, against the raw logit, on the first 40 test brands as `bench scoring --synth` takes them.

`refine`: the verifier read on the true mark box beats the detector's best box (0.635 against 0.606 in
session 17). Is a tighter box within reach? The detector run again on the window its best box grown 2x
cuts from the photo (`refined`), and the best box read at three scales with the lowest logit kept
(`scales`), against the box as served and the true box, on the same claims as `znorm`: the verifier's
claim AUC and how often the box (grown 1.25x) overlaps the true one at IoU >= 0.5.

`reference-cost` (not a limit; serving's cache sizes rest on it): per reference of the first 40 test brands,
one thread, warm, what the gate costs (`vision.verify.reference_is_mark`: a detector pass on the
framed reference) against the map (`MarkVerifier.maps` of the letterboxed reference).

Claim AUC: genuine claims against counterfeit ones, higher risk (or feature) for counterfeits. Writes
results/verifier_limits.json (each probe its key).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from markguard.serving.benchmarks.scoring import synth_sample
from markguard.training.data import load_image, mark_box
from markguard.training.metrics import roc_auc
from markguard.vision.artifact import load_artifact
from markguard.vision.regions import iou
from markguard.vision.verify import REFERENCE_FRAME, framed, grown, letterbox, reference_is_mark

RESULTS = Path(__file__).parent / "results" / "verifier_limits.json"
MODEL = Path("serving/default_model")


def auc_by_transform(score: np.ndarray, genuine: np.ndarray, transforms: np.ndarray) -> dict[str, float]:
    """Claim AUC over all counterfeits and per transform; `score` is higher for a counterfeit."""
    out = {"all": round(roc_auc(-score, genuine), 3)}
    for t in sorted(set(transforms[~genuine])):
        m = genuine | (transforms == t)
        out[str(t)] = round(roc_auc(-score[m], genuine[m]), 3)
    return out


def cmd_weight(args: argparse.Namespace) -> dict:
    out = {}
    for path in args.claims:
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        genuine = np.array([r["genuine"] for r in rows])
        transforms = np.array([r.get("transform") or "" for r in rows])
        risk = np.clip([r["risk"] for r in rows], 1e-6, 1 - 1e-6)
        mark = np.array([r["signals"]["mark_mismatch"]["contribution"] for r in rows])
        rest = np.log(risk / (1 - risk)) - mark
        scan = {str(k): auc_by_transform(rest + k * mark, genuine, transforms) for k in args.k}
        scan["verifier alone"] = auc_by_transform(mark, genuine, transforms)
        out[path.name] = {"claims": len(rows), "read": int((mark != 0).sum()), "auc_by_weight": scan}
        print(path.name, {k: v["all"] for k, v in scan.items()}, flush=True)
    return out


def box_aspect(box: tuple[float, float, float, float] | None) -> float:
    return float("nan") if box is None else (box[2] - box[0]) / max(1e-6, box[3] - box[1])


def cmd_aspect(args: argparse.Namespace) -> dict:
    detector = load_artifact(args.model).load_detector()
    out = {}
    for split in ("val", "test"):
        refs, _, queries = synth_sample(args.build, split, 0)
        reference = {}
        for brand, item in tqdm(refs.items(), desc=f"{split} references"):
            found = detector.detect([framed(load_image(item)[0], REFERENCE_FRAME)[0]])[0]
            reference[brand] = (box_aspect(mark_box(item)), box_aspect(found[0].box if found else None))
        rows = []
        for start in tqdm(range(0, len(queries), 32), desc=f"{split} claims"):
            batch = queries[start : start + 32]
            for q, found in zip(batch, detector.detect([load_image(q)[0] for q in batch]), strict=True):
                rows.append((q.genuine, q.row.transform or "", box_aspect(mark_box(q)),
                             box_aspect(found[0].box if found else None), *reference[q.brand]))
        genuine = np.array([r[0] for r in rows])
        transforms = np.array([r[1] for r in rows])
        a = np.array([r[2:] for r in rows], float)
        true, detected = np.abs(np.log(a[:, 0] / a[:, 2])), np.abs(np.log(a[:, 1] / a[:, 3]))
        detected = np.where(np.isnan(detected), np.nanmedian(detected), detected)
        out[split] = {"claims": len(rows), "brands": len(refs),
                      "true_boxes": auc_by_transform(true, genuine, transforms),
                      "detector_boxes": auc_by_transform(detected, genuine, transforms)}
        print(split, out[split], flush=True)
    return out


def derived_view(reference: np.ndarray, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """The reference photographed as a listing shows a mark: on a plain ground, 20-75% of the frame wide,
    turned (sd 0.15 rad) and in perspective (corners moved up to 18% of its shorter side), uneven light,
    blur 40% of the time, noise and JPEG q60-95."""
    h, w = reference.shape[:2]
    ground = np.full((size, size, 3), rng.integers(30, 225, 3), np.float32)
    ground += rng.normal(0, rng.uniform(2, 12), ground.shape).astype(np.float32)
    width = min(size * rng.uniform(0.2, 0.75), 0.8 * size * w / h)
    half = np.float32([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * np.float32([width / 2, width * h / w / 2])
    a = rng.normal(0, 0.15)
    turn = np.float32([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    corners = (half @ turn.T + rng.uniform(-0.18, 0.18, (4, 2)).astype(np.float32) * min(width, width * h / w)
               + np.float32(rng.uniform(0.35, 0.65, 2) * size))
    matrix = cv2.getPerspectiveTransform(np.float32([[0, 0], [w, 0], [w, h], [0, h]]), corners)
    printed = cv2.warpPerspective(reference, matrix, (size, size), flags=cv2.INTER_AREA).astype(np.float32)
    mask = cv2.warpPerspective(np.ones((h, w), np.float32), matrix, (size, size))[..., None]
    photo = ground * (1 - mask) + printed * mask
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    phi = rng.uniform(0, 2 * np.pi)
    photo *= (1 + rng.uniform(-0.35, 0.35) * (xx * np.cos(phi) + yy * np.sin(phi)) + rng.uniform(-0.15, 0.1))[..., None]
    if rng.random() < 0.4:
        photo = cv2.GaussianBlur(photo, (0, 0), float(rng.uniform(0.4, 1.4)))
    photo += rng.normal(0, rng.uniform(1, 6), photo.shape).astype(np.float32)
    _, jpeg = cv2.imencode(".jpg", np.clip(photo, 0, 255).astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 95))])
    return cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)


def cmd_znorm(args: argparse.Namespace) -> dict:
    artifact = load_artifact(args.model)
    detector, verifier = artifact.load_detector(), artifact.load_verifier()
    if verifier is None:
        raise SystemExit(f"{args.model} has no mark verifier")

    def logit(reference_map: torch.Tensor, photo: np.ndarray) -> float:  # as `claim_mark` reads a photo
        boxes = [d.box for d in detector.detect([photo])[0]]
        return float(verifier.logits(reference_map[None], verifier.query_map(photo, boxes)).min())

    refs, brands, queries = synth_sample(args.build, "test", 40)
    rows = []
    for i, brand in enumerate(tqdm(brands, desc="brands")):
        reference = load_image(refs[brand])[0]
        reference_map = verifier.reference_map(reference, detector)
        if reference_map is None:  # not a crop of a mark: serving reads no mark evidence for it either
            continue
        rng = np.random.default_rng([21, i])
        views = np.array([logit(reference_map, derived_view(reference, rng)) for _ in range(args.views)])
        rows += [(q.genuine, q.row.transform or "", logit(reference_map, load_image(q)[0]), views.mean(), views.std())
                 for q in queries if q.brand == brand]
    genuine = np.array([r[0] for r in rows])
    transforms = np.array([r[1] for r in rows])
    raw, mean, spread = (np.array([r[k] for r in rows]) for k in (2, 3, 4))
    out = {"claims": len(rows), "views": args.views,
           "raw": auc_by_transform(raw, genuine, transforms),
           "minus_view_mean": auc_by_transform(raw - mean, genuine, transforms),
           "z_score": auc_by_transform((raw - mean) / np.maximum(spread, 0.25), genuine, transforms)}
    print({k: v["all"] for k, v in out.items() if isinstance(v, dict)}, flush=True)
    return out


def refined(photo: np.ndarray, box: tuple[int, int, int, int], detector) -> tuple[int, int, int, int]:  # noqa: ANN001
    """The detector run again on the window its box grown 2x cuts from the photo (the mark then fills
    about half the detector's input, as a framed reference does): its best box there, in the photo's pixels;
    `box` when it finds none."""
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in grown(box, 2.0))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 - x0 < 8 or y1 - y0 < 8:
        return box
    found = detector.detect([np.ascontiguousarray(photo[y0:y1, x0:x1])])[0]
    if not found:
        return box
    bx0, by0, bx1, by1 = found[0].box
    return bx0 + x0, by0 + y0, bx1 + x0, by1 + y0


def cmd_refine(args: argparse.Namespace) -> dict:
    artifact = load_artifact(args.model)
    detector, verifier = artifact.load_detector(), artifact.load_verifier()
    refs, brands, queries = synth_sample(args.build, "test", 40)
    rows = []
    for brand in tqdm(brands, desc="brands"):
        reference_map = verifier.reference_map(load_image(refs[brand])[0], detector)
        if reference_map is None:
            continue
        for q in (q for q in queries if q.brand == brand):
            photo = load_image(q)[0]
            boxes = [d.box for d in detector.detect([photo])[0]]
            true = mark_box(q)
            reads = {"served": boxes, "refined": [refined(photo, boxes[0], detector), *boxes[1:]] if boxes else [],
                     "true": [true, *boxes] if true else boxes}
            logits = {k: float(verifier.logits(reference_map[None], verifier.query_map(photo, b)).min())
                      for k, b in reads.items()}
            if boxes:  # the best box at three scales (1.1x, 1.25x as served, 1.45x), the lowest logit
                logits["scales"] = min(float(verifier.logits(reference_map[None], verifier.query_map(
                    photo, [grown(boxes[0], f / verifier.config.grow)])).min()) for f in (1.1, 1.25, 1.45))
            else:
                logits["scales"] = logits["served"]
            overlap = {k: iou(grown(b[0], 1.25), grown(true, 1.25)) if b and true else 0.0
                       for k, b in reads.items() if k != "true"}
            rows.append((q.genuine, q.row.transform or "", logits, overlap))
    genuine = np.array([r[0] for r in rows])
    transforms = np.array([r[1] for r in rows])
    out = {"claims": len(rows)}
    overlap_kinds = ("served", "refined")
    for k in ("served", "refined", "scales", "true"):
        out[k] = auc_by_transform(np.array([r[2][k] for r in rows]), genuine, transforms)
        if k in overlap_kinds:
            o = np.array([r[3][k] for r in rows])
            out[k]["share_iou_0.5"] = round(float((o >= 0.5).mean()), 3)
            out[k]["median_iou"] = round(float(np.median(o)), 3)
    print({k: (v["all"], v.get("share_iou_0.5")) for k, v in out.items() if isinstance(v, dict)}, flush=True)
    return out


def cmd_reference_cost(args: argparse.Namespace) -> dict:
    artifact = load_artifact(args.model)
    detector, verifier = artifact.load_detector(), artifact.load_verifier()
    refs, brands, _ = synth_sample(args.build, "test", 40)
    photos = [load_image(refs[b])[0] for b in brands]
    torch.set_num_threads(1)

    def per_reference(work) -> float:  # noqa: ANN001
        work(photos[0])  # warm
        start = time.perf_counter()
        for photo in photos:
            work(photo)
        return round(1000 * (time.perf_counter() - start) / len(photos), 1)

    out = {"references": len(photos),
           "median_size_hw": np.median([p.shape[:2] for p in photos], axis=0).tolist(),
           "gate_ms": per_reference(lambda p: reference_is_mark(p, detector, min_iou=verifier.config.min_reference_iou)),
           "map_ms": per_reference(lambda p: verifier.maps([letterbox(p, (0, 0, p.shape[1], p.shape[0]),
                                                                       verifier.config.input_size)]))}
    print(out, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weight")
    w.add_argument("claims", type=Path, nargs="+")
    w.add_argument("--k", type=float, nargs="+", default=[0, 1, 2, 3, 5, 8])
    for name in ("aspect", "znorm", "refine", "reference-cost"):
        s = sub.add_parser(name)
        s.add_argument("build", type=Path)
        s.add_argument("--model", type=Path, default=MODEL)
    sub.choices["znorm"].add_argument("--views", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    result = {"weight": cmd_weight, "aspect": cmd_aspect, "znorm": cmd_znorm, "refine": cmd_refine,
              "reference-cost": cmd_reference_cost}[args.cmd](args)
    result["seconds"] = round(time.time() - t0, 1)
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    RESULTS.write_text(json.dumps({**saved, args.cmd: result}, indent=1) + "\n")
    print(f"wrote {RESULTS} ({args.cmd}, {result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
