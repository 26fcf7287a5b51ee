"""Derived references on GroZi-120 from cached vectors (`embed.py grozi 120`, `derived.py V`): per reference and per index size."""
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set
from fast import claims_of, combine, metrics

from markguard.training.evaluation import bootstrap_intervals, split_blocks

V = int(sys.argv[1])
es = eval_set("grozi", 120)
d = np.load("runs/issue21/grozi_120.npz")
dv = np.load(f"runs/issue21/grozi_derived{V}.npz")
counts = d["counts"].tolist()
R = len(es.references)
claims = claims_of(es)
first = []  # first reference of each product
seen = set()
for j, r in enumerate(es.references):
    if (r.brand, r.product) not in seen:
        seen.add((r.brand, r.product))
        first.append(j)
res = {}
for wlab, w in (("fine-tuned", 0.0), ("w=1", 1.0), ("imagenet", None)):
    if w is None:
        refs, der, q = d["in_refs"], dv["in_derived"], d["in_q"]
    else:
        refs, der, q = combine(d["ft_refs"], d["in_refs"], w), combine(dv["ft_derived"], dv["in_derived"], w), combine(d["ft_q"], d["in_q"], w)
    blocks = split_blocks(q, counts)
    configs = {
        "3 real (360)": (list(range(R)), refs),
        f"3 real + {V} derived each ({R*(1+V)})": (list(range(R)) * (1 + V), np.concatenate([refs, der])),
        "1 real (120)": (first, refs[first]),
        f"1 real + {V} derived ({len(first)*(1+V)})": (first * (1 + V), np.concatenate([refs[first]] + [der[[v * R + j for j in first]] for v in range(V)])),
    }
    runs = []
    for name, (idx, vecs) in configs.items():
        e = dataclasses.replace(es, references=[es.references[j] for j in idx])
        m = metrics(e, vecs, blocks, claims, True)
        runs.append(m)
        print(f"{wlab:<10} {name:<28} R@1 {m['recall_at_1']:.3f} AUC {m['claim_auc']:.3f} same {m['auc_same_brand']:.3f} other {m['auc_other_brand']:.3f}", flush=True)
        res[f"{wlab} | {name}"] = {k: v for k, v in m.items() if not k.startswith("_")}
    names = list(configs)
    for a, b in ((0, 1), (2, 3)):
        ci = bootstrap_intervals([runs[a], runs[b]], len(es.queries), groups=[q.brand for q in es.queries])
        print(f"   {names[b]} minus {names[a]}: R@1 {runs[b]['recall_at_1']-runs[a]['recall_at_1']:+.3f} [{ci['difference_recall_at_1'][1][0]:+.3f}, {ci['difference_recall_at_1'][1][1]:+.3f}] "
              f"AUC {runs[b]['claim_auc']-runs[a]['claim_auc']:+.3f} [{ci['difference_claim_auc'][1][0]:+.3f}, {ci['difference_claim_auc'][1][1]:+.3f}] (brands resampled)", flush=True)
json.dump(res, open(f"runs/issue21/grozi_derived{V}_eval.json", "w"), indent=1, default=float)
