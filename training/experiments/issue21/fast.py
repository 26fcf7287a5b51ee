"""Fast numpy re-implementation of bench embedder's recall@1 and (mixed-negative) claim AUC from cached vectors,
checked against evaluate_embeddings at w=0; cluster bootstrap via training.evaluation.bootstrap_intervals."""
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set

from markguard.training.evaluation import bootstrap_intervals, split_blocks
from markguard.training.metrics import roc_auc


def combine(a, b, w):
    return np.concatenate([a, w * b], axis=1) / np.sqrt(1 + w * w)

def claims_of(es, seed=0):
    rng = np.random.default_rng(seed)
    ref_classes = sorted({(r.brand, r.product) for r in es.references if r.genuine}, key=str)
    out = []
    for q, item in enumerate(es.queries):
        if not item.genuine:
            out.append((q, "counterfeit", item.brand, item.product))
            continue
        out.append((q, "true", item.brand, item.product))
        same = [c for c in ref_classes if c[0] == item.brand and c[1] != item.product]
        if same:
            out.append((q, "same_brand", *same[int(rng.integers(len(same)))]))
        other = [c for c in ref_classes if c[0] != item.brand]
        if other:
            out.append((q, "other_brand", *other[int(rng.integers(len(other)))]))
    return out

def metrics(es, refs, blocks, claims, mixed):
    R, Q = es.references, es.queries
    g_ref = [i for i, r in enumerate(R) if r.genuine]
    ref_lab = np.array([f"{R[i].brand}\x1f{R[i].product}" for i in g_ref])
    g_q = [i for i, q in enumerate(Q) if q.genuine]
    q_lab = np.array([f"{Q[i].brand}\x1f{Q[i].product}" for i in g_q])
    sims = {i: blocks[i] @ refs.T for i in range(len(Q))}  # (regions, refs)
    sim = np.stack([sims[i][:, g_ref].max(axis=0) for i in g_q])
    hits = ref_lab[np.argmax(sim, axis=1)] == q_lab
    # claim scores: best genuine similarity over regions x the claimed product's (or brand's) genuine refs
    scores = []
    for q, _kind, brand, product in claims:
        cols = [j for j, r in enumerate(R) if r.genuine and r.brand == brand and (product is None or r.product == product)]
        scores.append(sims[q][:, cols].max() if cols else -np.inf)
    scores = np.array(scores)
    kinds = np.array([c[1] for c in claims])
    cq = np.array([c[0] for c in claims])
    pos = kinds == "true"
    has_same = np.zeros(len(Q), bool)
    has_same[cq[kinds == "same_brand"]] = True
    if mixed:
        mask = pos | (kinds == "same_brand") | ((kinds == "other_brand") & ~has_same[cq])
    else:
        prim = "same_brand" if (kinds == "same_brand").any() else ("counterfeit" if (kinds == "counterfeit").any() else "other_brand")
        mask = pos | (kinds == prim)
    m = {"recall_at_1": float(hits.mean()), "claim_auc": roc_auc(scores[mask], pos[mask]),
         "_hits": (np.array(g_q), hits), "_claims": (cq, pos, mask, scores)}
    for k in ("same_brand", "other_brand", "counterfeit"):
        mk = pos | (kinds == k)
        if (kinds == k).any():
            m[f"auc_{k}"] = roc_auc(scores[mk], pos[mk])
    return m

if __name__ == "__main__":
    which, maxq = sys.argv[1], int(sys.argv[2])
    weights = [float(x) for x in sys.argv[3].split(",")]
    boot = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 and sys.argv[4] else []
    es = eval_set(which, maxq)
    d = np.load(f"runs/issue21/{which}_{maxq}.npz")
    counts = d["counts"].tolist()
    claims = claims_of(es)
    runs, labels = [], []
    for w in weights:
        m = metrics(es, combine(d["ft_refs"], d["in_refs"], w), split_blocks(combine(d["ft_q"], d["in_q"], w), counts), claims, which == "grozi")
        runs.append(m)
        labels.append(f"w={w}")
    runs.append(metrics(es, d["in_refs"], split_blocks(d["in_q"], counts), claims, which == "grozi"))
    labels.append("imagenet(trained regions)")
    for lab, m in zip(labels, runs, strict=False):
        print(which, f"{lab:<26}", f"R@1 {m['recall_at_1']:.3f} AUC {m['claim_auc']:.3f}", " ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith("auc_")), flush=True)
    res = {lab: {k: v for k, v in m.items() if not k.startswith("_")} for lab, m in zip(labels, runs, strict=False)}
    if boot:
        sel = [runs[k] for k in boot]
        names = [labels[k] for k in boot]
        t = time.time()
        ci = bootstrap_intervals(sel, len(es.queries), groups=[q.brand for q in es.queries])
        for k, lab in enumerate(names):
            print(f"  {lab:<26} brands-resampled 95% CI: R@1 [{ci['recall_at_1'][k][0]:.3f}, {ci['recall_at_1'][k][1]:.3f}] "
                  f"AUC [{ci['claim_auc'][k][0]:.3f}, {ci['claim_auc'][k][1]:.3f}]; minus {names[0]}: "
                  f"R@1 {sel[k]['recall_at_1']-sel[0]['recall_at_1']:+.3f} [{ci['difference_recall_at_1'][k][0]:+.3f}, {ci['difference_recall_at_1'][k][1]:+.3f}] "
                  f"AUC {sel[k]['claim_auc']-sel[0]['claim_auc']:+.3f} [{ci['difference_claim_auc'][k][0]:+.3f}, {ci['difference_claim_auc'][k][1]:+.3f}]", flush=True)
            res[lab]["ci_brands"] = {c: ci[c][k] for c in ("recall_at_1", "claim_auc")}
            res[lab][f"minus_{names[0]}_ci_brands"] = {c: ci[f"difference_{c}"][k] for c in ("recall_at_1", "claim_auc")}
        print(f"  (bootstrap {time.time()-t:.0f}s)")
    json.dump(res, open(f"runs/issue21/{which}_{maxq}_fast.json", "w"), indent=1, default=float)
