"""The eval sets of the issue-21 experiments, as `markguard bench embedder` and `markguard train` build them."""
import dataclasses

from markguard.training.benchmarks.embedder import subsample_queries
from markguard.training.calibration import stable_share
from markguard.training.data import EvalSet, make_eval_set, read_items


def eval_set(which, maxq):
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
    return es

