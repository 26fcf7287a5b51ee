"""Cache the frozen-prefix features (Lite0, all but the last K MBConv blocks) of an eval set's references and
query regions (the shipped model's regions, as served), so any suffix (the shipped model's, ImageNet's, a
candidate fine-tune's) scores the set without running the trunk again.

    python cache_eval.py SET MAXQ [K]     -> runs/issue21/prefix_SET_MAXQ_kK.pt
"""
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from analyze_sets import eval_set

from markguard.training.artifacts import resolve_model
from markguard.training.benchmarks.embedder import SHIPPED
from markguard.training.data import eval_transform, load_images
from markguard.training.evaluation import query_region_crops
from markguard.training.model import SplitEmbedder, cache_prefix

torch.set_num_threads(1)
which, maxq = sys.argv[1], int(sys.argv[2])
k = int(sys.argv[3]) if len(sys.argv) > 3 else 2
es = eval_set(which, maxq)
shipped = resolve_model(str(SHIPPED))
t0 = time.time()
crops, counts = query_region_crops(load_images(es.queries), max_regions=shipped.max_regions,
                                   detector=shipped.load_detector())
t1 = time.time()
print(which, len(es.queries), "queries", len(es.references), "refs", len(crops), "crops", f"regions {t1 - t0:.0f}s",
      flush=True)
model = shipped.load_embedder()
split = SplitEmbedder(model, trainable_blocks=k)
cfg = model.config
refs = cache_prefix(split, lambda a, b: eval_transform(load_images(es.references[a:b]), cfg), len(es.references),
                    batch_size=32, desc="refs")
queries = cache_prefix(split, lambda a, b: eval_transform(crops[a:b], cfg), len(crops), batch_size=32, desc="regions")
torch.save({"references": refs, "queries": queries, "query_regions": torch.tensor(counts),
            "k": k, "set": which, "maxq": maxq}, f"runs/issue21/prefix_{which}_{maxq}_k{k}.pt")
print("done", f"prefix {time.time() - t1:.0f}s", flush=True)
