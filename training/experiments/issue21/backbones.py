"""ImageNet baselines of other registered backbones (issue 21 item 4a) on the shipped model's regions.

    python backbones.py SET MAXQ ARCH    -> runs/issue21/backbone_ARCH_SET_MAXQ.npz and its figures

Recall@1 and claim AUC as fast.py computes them (GroZi: bench embedder's claims), printed beside the cached
Lite0 ImageNet and shipped vectors of recipe.py baselines when present.
"""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set
from fast import claims_of, metrics

from markguard.training.artifacts import resolve_model
from markguard.training.benchmarks.embedder import SHIPPED
from markguard.training.data import load_images
from markguard.training.evaluation import query_region_crops, split_blocks
from markguard.vision.artifact import build_imagenet_artifact
from markguard.vision.embed import embed_images

torch.set_num_threads(1)
which, maxq, arch = sys.argv[1], int(sys.argv[2]), sys.argv[3]
es = eval_set(which, maxq)
out = Path(f"runs/issue21/backbone_{arch}_{which}_{maxq}.npz")
if not out.is_file():
    shipped = resolve_model(str(SHIPPED))
    t = time.time()
    crops, counts = query_region_crops(load_images(es.queries), max_regions=shipped.max_regions,
                                       detector=shipped.load_detector())
    with tempfile.TemporaryDirectory() as tmp:
        art = build_imagenet_artifact(Path(tmp) / "imagenet", architecture=arch, fusion={
            "kind": "provisional", "similarity_floor": 0.0, "similarity_ceiling": 1.0, "match_threshold": 0.0,
            "review_at": 0.5, "takedown_at": 0.9})
        model = art.load_embedder()
        refs, q = embed_images(model, load_images(es.references)), embed_images(model, crops)
    np.savez(out, refs=refs, q=q, counts=np.array(counts))
    print(f"{arch} {which}: {len(crops)} regions embedded in {time.time() - t:.0f}s", flush=True)
d = np.load(out)
claims = claims_of(es)
m = metrics(es, d["refs"], split_blocks(d["q"], d["counts"].tolist()), claims, which == "grozi")
print(f"{arch} {which} {maxq}: recall@1 {m['recall_at_1']:.3f} claim AUC {m['claim_auc']:.3f}",
      " ".join(f"{k} {v:.3f}" for k, v in m.items() if k.startswith("auc_")))
