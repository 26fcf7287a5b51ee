"""Issue 21: local evidence on the detector's mark crop, enlarged, instead of the whole photo at 2x.

    python training/experiments/issue21/local_crop.py runs/issue21/synth-vt --out runs/s19/local_crop [--side 384]
    python training/experiments/issue21/verifier_local.py runs/issue21/synth-vt --features runs/s19/local_crop/features.jsonl \
        --out runs/s19/verifier_local_crop.json

`local_evidence.py` matches the whole photo against the reference, both enlarged 2x: a homography is found
for about half the claims (45% of genuine test claims), and it costs about 0.17 s a claim. Here the
photo is first cut to the detector's best box grown 1.5x (the whole photo when it finds none), and the
cut and the reference are each enlarged to `--side` px on their longer side, so SIFT sees the mark at the
reference's scale. Same claims (`local_evidence.pick`: 40 val, 84 test brands) and the same feature
rows as `local_evidence.py` (serving's whole-photo `geometry_inliers` at 1x included), so its fits and
`verifier_local.py` read them unchanged. Prints the share of claims with a homography and the seconds a
claim.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from local_evidence import pick  # noqa: E402

from markguard.training.data import load_image, read_items  # noqa: E402
from markguard.vision.artifact import load_artifact  # noqa: E402
from markguard.vision.geometry import extract_features, match_features  # noqa: E402
from markguard.vision.local_evidence import local_evidence  # noqa: E402
from markguard.vision.verify import grown  # noqa: E402


def to_side(image: np.ndarray, side: int) -> np.ndarray:
    s = side / max(image.shape[:2])
    return cv2.resize(image, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)


def mark_cut(photo: np.ndarray, boxes: list) -> np.ndarray:
    if not boxes:
        return photo
    h, w = photo.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in grown(boxes[0], 1.5))
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    return photo[y0:y1, x0:x1] if x1 - x0 >= 8 and y1 - y0 >= 8 else photo


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("synth", type=Path)
    p.add_argument("--out", type=Path, default=Path("runs/s19/local_crop"))
    p.add_argument("--side", type=int, default=384)
    p.add_argument("--model", type=Path, default=Path("serving/default_model"))
    args = p.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    detector = load_artifact(args.model).load_detector()
    items = read_items(args.synth)
    rows, seconds = [], []
    for split, count in (("val", 40), ("test", 84)):
        refs, queries = pick(items, split, count)
        ref_cache = {}
        for q in tqdm(queries, desc=split):
            if q.brand not in ref_cache:
                image = load_image(refs[q.brand])[0]
                big = to_side(image, args.side)
                ref_cache[q.brand] = (extract_features(image), big, extract_features(big, max_side=1024))
            ref_features, ref_big, ref_big_features = ref_cache[q.brand]
            photo = load_image(q)[0]
            started = time.perf_counter()
            cut = to_side(mark_cut(photo, [d.box for d in detector.detect([photo])[0]]), args.side)
            ev = local_evidence(cut, ref_big, query=extract_features(cut, max_side=1024), reference=ref_big_features)
            seconds.append(time.perf_counter() - started)
            rows.append({"image": str(q.row.image), "brand": q.brand, "split": split, "genuine": q.genuine,
                         "transform": q.row.transform, "strength": q.row.strength,
                         "geometry_inliers": match_features(extract_features(photo), ref_features).inliers,
                         **dataclasses.asdict(ev)})
    (args.out / "features.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split in ("val", "test"):
        for genuine in (True, False):
            sel = [r for r in rows if r["split"] == split and r["genuine"] == genuine]
            print(f"{split} {'genuine' if genuine else 'counterfeit'}: homography for "
                  f"{np.mean([r['inliers'] > 0 for r in sel]):.2f} of {len(sel)}")
    print(f"{np.median(seconds) * 1000:.0f} ms a claim (median; detector, cut, SIFT and the measures), "
          f"wrote {args.out / 'features.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
