"""Issue 21, item 5: does reading the wordmark on the mark itself, enlarged, tell misspelt wordmarks
from genuine ones where the whole-photo read does not?

On the held-out synthetic brands whose mark carries a wordmark (the brand's name), every genuine photo
and every `misspelled_wordmark` counterfeit is read three ways with the real EasyOCR:
  whole     the whole photo, as the full path reads it (`OcrEngine.read`);
  detector  the shipped detector's mark boxes grown 1.25x, each read at its own scale (`read(regions=)`);
  truth     the manifest's mark box grown 1.25x, the same way (the ceiling of finding the mark).
Each read is matched against the brand's wordmark (`vision.text.match_wordmarks`) as the fusion sees it:
exact, near miss (a misspelling), or nothing; `+tol` rows allow a near miss up to 40% of the mark's
letters in edits (the matcher allows 0-2 by length; the synthetic misspellings make 1-3). A score per photo (near miss 1, nothing 0.5, exact 0)
gives the claim AUC of the misspelt transform, with an interval resampling brands.

    python training/experiments/issue21/wordmark_crops.py runs/issue21/synth-vt --brands 60 --genuine-per-brand 2

Writes results/wordmark_crops.json (each photo's reads) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from markguard.training.metrics import roc_auc
from markguard.vision.artifact import load_artifact
from markguard.vision.ocr import shared_ocr_engine
from markguard.vision.text import WordmarkMatch, _skeleton, edit_distance, match_wordmarks

HERE = Path(__file__).resolve().parent
WAYS = ("whole", "detector", "truth")
SCORE = {"near_miss": 1.0, "none": 0.5, "exact": 0.0}


def _grow(box: list[int], w: int, h: int, factor: float = 1.25) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) * factor, (y1 - y0) * factor
    return (max(0, int(cx - bw / 2)), max(0, int(cy - bh / 2)), min(w, int(cx + bw / 2 + 0.5)), min(h, int(cy + bh / 2 + 0.5)))


def _brand_interval(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, rounds: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the AUC, resampling whole brands with replacement."""
    rng = np.random.default_rng(seed)
    keys = np.unique(groups)
    members = [np.flatnonzero(groups == k) for k in keys]
    draws = []
    for _ in range(rounds):
        idx = np.concatenate([members[i] for i in rng.integers(len(keys), size=len(keys))])
        if 0 < labels[idx].sum() < len(idx):
            draws.append(roc_auc(scores[idx], labels[idx]))
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def _outcome(texts: list[str], brand: str) -> str:
    hits = [h.match for h in match_wordmarks(texts, brand=brand, wordmarks={brand: [brand]}) if h.brand == brand]
    if WordmarkMatch.EXACT in hits:
        return "exact"
    return "near_miss" if WordmarkMatch.NEAR_MISS in hits else "none"


def _tolerant(texts: list[str], brand: str, share: float = 0.4) -> str:
    """As `_outcome`, but a near miss may take up to `share` of the mark's letters in edits (the
    matcher allows 0, 1 or 2 by length): the synthetic misspellings make 1-3 edits."""
    mark = _skeleton(brand)
    best = None
    for line in texts:
        words = line.split()
        for i in range(len(words)):
            for j in range(i + 1, min(len(words), i + len(brand.split()) + 1) + 1):
                skel = _skeleton(" ".join(words[i:j]))
                if skel:
                    d = edit_distance(skel, mark)
                    best = d if best is None else min(best, d)
    if best == 0:
        return "exact"
    return "near_miss" if best is not None and best <= max(1, round(share * len(mark))) else "none"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("build", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--brands", type=int, default=84)
    p.add_argument("--genuine-per-brand", type=int, default=2)
    p.add_argument("--out", type=Path, default=HERE / "results" / "wordmark_crops.json")
    args = p.parse_args()
    rows = [json.loads(line) for line in (args.build / "manifest.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["split"] == args.split]
    text_brands = sorted({r["brand"] for r in rows if r.get("transform") == "misspelled_wordmark"})[: args.brands]
    photos, genuine = [], defaultdict(int)
    for r in rows:
        if r["brand"] in text_brands and r["label"] == "genuine" and genuine[r["brand"]] < args.genuine_per_brand:
            genuine[r["brand"]] += 1
            photos.append(r)
        elif r["brand"] in text_brands and r.get("transform") == "misspelled_wordmark":
            photos.append(r)
    detector = load_artifact(Path(__file__).resolve().parents[3] / "serving" / "default_model").load_detector()
    ocr = shared_ocr_engine()
    cache = json.loads(args.out.read_text()) if args.out.exists() else {}
    started = time.perf_counter()
    for r in tqdm(photos, desc="read"):
        if r["image"] in cache:
            continue
        image = np.asarray(Image.open(args.build / r["image"]).convert("RGB"))
        h, w = image.shape[:2]
        mark = next(b["xyxy"] for b in r["boxes"] if b["kind"] == "mark")
        found = [d.box for d in detector.detect([image])[0]]
        reads = {"whole": ocr.read(image),
                 "detector": ocr.read(image, regions=[_grow(list(b), w, h) for b in found]) if found else [],
                 "truth": ocr.read(image, regions=[_grow(mark, w, h)])}
        cache[r["image"]] = {"brand": r["brand"], "label": r["label"],
                             "texts": {k: [line.text for line in v] for k, v in reads.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(cache, indent=1) + "\n")
    items = [cache[r["image"]] for r in photos]
    labels = np.array([int(i["label"] != "genuine") for i in items])
    groups = np.array([i["brand"] for i in items])
    print(f"{len(text_brands)} brands, {int((labels == 0).sum())} genuine, {int(labels.sum())} misspelt photos; "
          f"{time.perf_counter() - started:.0f} s of reading")
    print(f"{'way':14}{'genuine: exact / near miss / none':>36}{'misspelt: exact / near miss / none':>38}"
          f"{'AUC [95%]':>24}")
    summary = {}
    for way, match in [(w, _outcome) for w in WAYS] + [(w + "+tol", _tolerant) for w in WAYS]:
        outcomes = [match(i["texts"][way.removesuffix("+tol")], i["brand"]) for i in items]
        counts = {c: defaultdict(int) for c in (0, 1)}
        for o, y in zip(outcomes, labels, strict=True):
            counts[int(y)][o] += 1
        scores = np.array([SCORE[o] for o in outcomes])
        auc = roc_auc(scores, labels)
        ci = _brand_interval(labels, scores, groups)
        summary[way] = {"auc": auc, "interval": ci, "genuine": dict(counts[0]), "misspelt": dict(counts[1])}
        g, m = counts[0], counts[1]
        print(f"{way:14}{g['exact']:>20} / {g['near_miss']:>3} / {g['none']:>4}{m['exact']:>22} / {m['near_miss']:>3} / "
              f"{m['none']:>4}{auc:>10.3f} [{ci[0]:.3f}, {ci[1]:.3f}]")
    (args.out.with_suffix(".summary.json")).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
