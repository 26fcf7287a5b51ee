"""Brand-resampled 95% intervals of recipes against the shipped model, from recipe.py's saved vectors.

    python compare.py SET NAME [NAME ...]     (SET: grozi or grocery_val; `shipped` first is implied)
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set
from fast import claims_of, metrics
from recipe import OUT, SETS

from markguard.training.evaluation import bootstrap_intervals, split_blocks

which, names = sys.argv[1], ["shipped", *sys.argv[2:]]
es = eval_set(which, SETS[which])
counts = torch.load(OUT / f"prefix_{which}_{SETS[which]}_k2.pt", weights_only=True)["query_regions"].tolist()
claims = claims_of(es)
runs = []
for name in names:
    d = np.load(OUT / f"recipe_{name}.npz")
    runs.append(metrics(es, d[f"{which}_refs"], split_blocks(d[f"{which}_q"], counts), claims, which == "grozi"))
ci = bootstrap_intervals(runs, len(es.queries), groups=[q.brand for q in es.queries])
for k, name in enumerate(names):
    m = runs[k]
    print(f"{which} {name:<10} R@1 {m['recall_at_1']:.3f} [{ci['recall_at_1'][k][0]:.3f}, {ci['recall_at_1'][k][1]:.3f}] "
          f"AUC {m['claim_auc']:.3f} [{ci['claim_auc'][k][0]:.3f}, {ci['claim_auc'][k][1]:.3f}]"
          + ("" if k == 0 else f"; minus shipped: R@1 {m['recall_at_1'] - runs[0]['recall_at_1']:+.3f} "
             f"[{ci['difference_recall_at_1'][k][0]:+.3f}, {ci['difference_recall_at_1'][k][1]:+.3f}] AUC "
             f"{m['claim_auc'] - runs[0]['claim_auc']:+.3f} [{ci['difference_claim_auc'][k][0]:+.3f}, "
             f"{ci['difference_claim_auc'][k][1]:+.3f}]"), flush=True)
