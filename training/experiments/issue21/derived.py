"""Derived references (issue 21 item 3): V augmented views of every GroZi reference, embedded by both models."""
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set

from markguard.training.artifacts import resolve_model
from markguard.training.benchmarks.embedder import _NO_FUSION, SHIPPED
from markguard.training.data import augment, load_images
from markguard.vision.artifact import build_imagenet_artifact
from markguard.vision.embed import embed_images

torch.set_num_threads(2)
V = int(sys.argv[1])
es = eval_set("grozi", 120)
imgs = load_images(es.references)
rng = np.random.default_rng(0)
params = {"scale_min": 0.75, "rotate": 10.0, "brightness": 0.25, "contrast": 0.25, "blur_p": 0.5}
views = [augment(im, rng=rng, params=params) for v in range(V) for im in imgs]  # view-major: view v of ref r at v*R + r
out = {}
with tempfile.TemporaryDirectory() as tmp:
    for label, art in (("ft", resolve_model(str(SHIPPED))), ("in", build_imagenet_artifact(Path(tmp) / "i", fusion=_NO_FUSION))):
        t = time.time()
        out[f"{label}_derived"] = embed_images(art.load_embedder(), views)
        print(label, f"{time.time()-t:.0f}s", flush=True)
np.savez(f"runs/issue21/grozi_derived{V}.npz", **out)
