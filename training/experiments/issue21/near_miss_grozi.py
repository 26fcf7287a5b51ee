"""Issue 21, item 5: what the wordmark near-miss prior does to genuine claims on real photos.

`wordmark_real.py` found that on GroZi-120's small in-store frames every near miss the shipped matcher
reads is EasyOCR misreading the genuine mark. This takes the full scoring's own claims from
`markguard bench scoring --grozi runs/grozi-build --grozi-queries 4 --out runs/issue21/grozi-claims.json`
(its `.claims.jsonl`: each query frame claiming its own product, then another), and recomputes each
claim's risk as the shipped fusion would give it with some wordmark signals weighing 0 (the logistic
fusion is linear in log-odds: risk = sigmoid(bias + Σ contributions)). Claim AUC with brand-resampled 95%
intervals, the paired difference, and the decisions at the model's thresholds.

    python training/experiments/issue21/near_miss_grozi.py runs/issue21/grozi-claims.claims.jsonl \\
        --build runs/grozi-build
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np

from markguard.serving.benchmarks.scoring import resample_brands
from markguard.training.metrics import roc_auc

ROOT = Path(__file__).resolve().parents[3]
VARIANTS = {"shipped": (), "near miss 0": ("wordmark_near_miss",),
            "near miss and exact 0": ("wordmark_near_miss", "wordmark_exact")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("claims", type=Path)
    p.add_argument("--build", type=Path, required=True)
    p.add_argument("--fusion", type=Path, default=ROOT / "serving" / "default_model" / "fusion.json")
    p.add_argument("--boot", type=int, default=1000)
    args = p.parse_args()
    fusion = json.loads(args.fusion.read_text())
    brand_of = {r["product"]: r["brand"] for r in map(json.loads, (args.build / "manifest.jsonl").read_text().splitlines())}
    claims = [json.loads(line) for line in args.claims.read_text().splitlines()]
    true, false = claims[0::2], claims[1::2]
    assert all(t["genuine"] and not f["genuine"] and t["image"] == f["image"] for t, f in zip(true, false, strict=True))
    brands = np.array([brand_of[t["product"]] for t in true])

    def logit(claim: dict, drop: tuple[str, ...]) -> float:
        assert abs(fusion["bias"] + sum(s["contribution"] for s in claim["signals"].values())
                   - np.log(max(claim["risk"], 1e-6) / max(1 - claim["risk"], 1e-6))) < 0.05 or not 0.001 < claim["risk"] < 0.999
        return fusion["bias"] + sum(s["contribution"] for n, s in claim["signals"].items() if n not in drop)

    def decision(z: float) -> str:
        risk = 1 / (1 + np.exp(-z))
        return "takedown" if risk >= fusion["takedown_at"] else "review" if risk >= fusion["review_at"] else "pass"

    for kind, rows in (("genuine", true), ("false", false)):
        fired = Counter(n for c in rows for n in ("wordmark_near_miss", "wordmark_exact", "other_brand_wordmark")
                        if c["signals"][n]["value"])
        print(f"{kind} claims: {len(rows)}; wordmark signals read: {dict(fired)}")
    scores = {name: (np.array([-logit(c, drop) for c in true]), np.array([-logit(c, drop) for c in false]))
              for name, drop in VARIANTS.items()}

    def auc(name: str, i: np.ndarray) -> float:
        t, f = scores[name]
        return roc_auc(np.concatenate([t[i], f[i]]), np.concatenate([np.ones(len(i), bool), np.zeros(len(i), bool)]))

    stats = {f"auc {name}": (lambda i, n=name: auc(n, i)) for name in VARIANTS}
    stats |= {f"auc {name} − shipped": (lambda i, n=name: auc(n, i) - auc("shipped", i)) for name in VARIANTS if name != "shipped"}
    table = resample_brands(stats, brands, boot=args.boot)
    for name, row in table.items():
        print(f"{name:34} {row['value']:+.4f} [{row['lo']:+.4f}, {row['hi']:+.4f}]")
    for name, drop in VARIANTS.items():
        print(f"{name:22} genuine decisions {dict(Counter(decision(logit(c, drop)) for c in true))}, "
              f"false {dict(Counter(decision(logit(c, drop)) for c in false))}")
    moved = [(t["image"], t["product"], t["decision"], decision(logit(t, ("wordmark_near_miss",))))
             for t in true if t["signals"]["wordmark_near_miss"]["value"]]
    print("genuine claims with a near miss (image, product, decision shipped → without the near miss):")
    for row in moved:
        print("  ", *row)


if __name__ == "__main__":
    main()
