"""Cache trained + ImageNet region vectors of the eval sets (trained model's regions, as served)."""
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from markguard.training.artifacts import resolve_model
from markguard.training.benchmarks.embedder import SHIPPED, subsample_queries
from markguard.training.calibration import stable_share
from markguard.training.data import EvalSet, load_images, make_eval_set, read_items
from markguard.training.evaluation import query_region_crops
from markguard.vision.artifact import build_imagenet_artifact
from markguard.vision.embed import embed_images

torch.set_num_threads(2)
which = sys.argv[1]
maxq = int(sys.argv[2]) if len(sys.argv) > 2 else 0
trained = resolve_model(str(SHIPPED))
if which == "grozi":
    es = make_eval_set(read_items(".markguard/data/grozi/manifest.jsonl"), split="query", name="grozi")
elif which == "grocery_val":
    es = make_eval_set(read_items(".markguard/data/grocery/manifest.jsonl"), split="val", name="grocery_val")
elif which == "grocery_cal":
    rows = read_items(".markguard/data/grocery/manifest.jsonl")
    held = [i for i in rows if i.row.split == "train" and i.row.source != "iconic" and stable_share(i.row.image) < 0.15]
    iconic = sorted((i for i in rows if i.row.source == "iconic"), key=lambda i: i.row.image)
    es = EvalSet(name="grocery_cal", references=iconic, queries=held)
elif which == "synth_val":
    es = make_eval_set(read_items(".markguard/data/synth/manifest.jsonl"), split="val", name="synth_val")
if maxq:
    es = dataclasses.replace(es, queries=subsample_queries(es.queries, maxq))
t0 = time.time()
det = trained.load_detector()
crops, counts = query_region_crops(load_images(es.queries), max_regions=trained.max_regions, detector=det)
ref_imgs = load_images(es.references)
t1 = time.time()
print(which, len(es.queries), "queries", len(es.references), "refs", len(crops), "crops", f"regions {t1-t0:.0f}s", flush=True)
with tempfile.TemporaryDirectory() as tmp:
    base = build_imagenet_artifact(Path(tmp) / "imagenet", fusion={"kind": "provisional", "similarity_floor": 0.0, "similarity_ceiling": 1.0, "match_threshold": 0.0, "review_at": 0.5, "takedown_at": 0.9})
    out = {"counts": np.array(counts)}
    for label, art in (("ft", trained), ("in", base)):
        t = time.time()
        m = art.load_embedder()
        out[f"{label}_refs"] = embed_images(m, ref_imgs)
        out[f"{label}_q"] = embed_images(m, crops)
        print(label, f"{time.time()-t:.0f}s", flush=True)
np.savez(f"runs/issue21/{which}_{maxq}.npz", **out)
print("done", f"{time.time()-t0:.0f}s")
