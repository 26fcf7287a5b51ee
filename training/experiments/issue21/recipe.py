"""Short fine-tunes that keep ImageNet's geometry (issue 21 item 4), on cached Lite0 prefix features.

    python recipe.py cache N_SYNTH              training views of all grocery training photos (less grocery_cal) and
                                                N_SYNTH synthetic training photos (seeded), prefix at K=2 blocks
    python recipe.py train NAME key=value ...   one recipe; keys: k (trainable blocks: -1 projection only, 0 + head
                                                conv, 1 + last block), epochs, lr, head_lr, distill (weight of
                                                `similarity_distillation_loss` to the ImageNet pooled features of the
                                                same batch), tau, l2sp (weight of sum (theta - theta_ImageNet)^2 over
                                                trunk parameters), margin
    python recipe.py baselines                  shipped model and ImageNet on the same cached sets

Every recipe is scored after each epoch on grocery_cal (all), synth_val (120), grocery_val (100) and GroZi (120)
from `cache_eval.py`'s prefix caches (the shipped model's regions); vectors of the last epoch go to
runs/issue21/recipe_NAME.npz and figures to runs/issue21/recipe_NAME.json. Choose on grocery_cal and synth_val.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from analyze_sets import eval_set
from fast import claims_of, metrics

from markguard.training.artifacts import resolve_model
from markguard.training.benchmarks.embedder import SHIPPED
from markguard.training.config import load_config
from markguard.training.data import class_key
from markguard.training.evaluation import evaluate_embeddings, split_blocks
from markguard.training.losses import create_loss, similarity_distillation_loss
from markguard.training.model import SplitEmbedder, build_model
from markguard.training.train import _cache_train, _load_data

torch.set_num_threads(1)
OUT = Path("runs/issue21")
K_CACHE = 2
SETS = {"grocery_cal": 0, "synth_val": 120, "grocery_val": 100, "grozi": 120}


def load_sets(wait: float = 0.0):
    deadline = time.time() + wait  # a recipe started while cache_eval.py still runs waits for its caches
    while time.time() < deadline and not all((OUT / f"prefix_{n}_{m}_k{K_CACHE}.pt").is_file() for n, m in SETS.items()):
        time.sleep(10)
    out = {}
    for name, maxq in SETS.items():
        path = OUT / f"prefix_{name}_{maxq}_k{K_CACHE}.pt"
        if path.is_file():
            out[name] = (eval_set(name, maxq), torch.load(path, weights_only=True))
    return out


def vectors_from(model, f2):  # noqa: ANN001
    """Unit embeddings of a BackboneEmbedder on prefix features cached at K_CACHE blocks."""
    bb = model.backbone
    split = len(bb.stages) - K_CACHE
    with torch.no_grad():
        out = [F.normalize(model.head(bb.forward_from(f2[i:i + 256].float(), split).mean(dim=(2, 3))), dim=1)
               for i in range(0, len(f2), 256)]
    return torch.cat(out).numpy()


def score(model, sets):  # noqa: ANN001
    res, vecs = {}, {}
    model.eval()
    for name, (es, c) in sets.items():
        refs, q = vectors_from(model, c["references"]), vectors_from(model, c["queries"])
        counts = c["query_regions"].tolist()
        vecs[name] = (refs, q)
        if name == "grozi":  # bench embedder's GroZi claims: same brand where it has one, else another brand
            m = metrics(es, refs, split_blocks(q, counts), claims_of(es), True)
        else:
            m = evaluate_embeddings(es, refs, split_blocks(q, counts))
        res[name] = {"recall_at_1": round(float(m["recall_at_1"]), 4), "claim_auc": round(float(m["claim_auc"]), 4)}
    return res, vecs


def items_subset(n_synth):
    config = load_config(None, [])
    items, _, _ = _load_data(config)
    grocery = [i for i in items if i.row.source != "synth"]
    synth = [i for i in items if i.row.source == "synth"]
    keep = np.sort(np.random.default_rng(0).permutation(len(synth))[:n_synth])
    return config, grocery + [synth[i] for i in keep]


def cmd_cache(n_synth):
    config, items = items_subset(n_synth)
    model = build_model(architecture="efficientnet_lite0", input_size=224, embedding_dim=256, seed=0)
    split = SplitEmbedder(model, trainable_blocks=K_CACHE)
    t = time.time()
    feats, owner = _cache_train(split, items, config, "cpu", quiet=True)
    keys = [class_key(items[int(i)].row, per_transform=True) for i in owner]
    torch.save({"feats": feats.half(), "owner": owner, "keys": keys, "n_synth": n_synth}, OUT / f"train_cache_{n_synth}.pt")
    print(f"cached {len(feats)} views of {len(items)} photos in {time.time() - t:.0f}s")


def cmd_train(name, opts):
    o = {"k": 1, "epochs": 6, "lr": 3e-4, "head_lr": 3e-3, "distill": 0.0, "tau": 0.1, "l2sp": 0.0, "margin": 0.2,
         "wd": 1e-4, "batch": 128, "n_synth": 600, "seed": 0}
    for kv in opts:
        k, v = kv.split("=")
        o[k] = type(o[k])(v) if not isinstance(o[k], int) else int(v)
    torch.manual_seed(o["seed"])
    data = torch.load(OUT / f"train_cache_{o['n_synth']}.pt", weights_only=True)
    classes = sorted(set(data["keys"]))
    labels = torch.tensor([classes.index(k) for k in data["keys"]])
    model = build_model(architecture="efficientnet_lite0", input_size=224, embedding_dim=256, seed=o["seed"])
    split = SplitEmbedder(model, trainable_blocks=o["k"])
    bb = model.backbone
    stages = len(bb.stages)
    t0 = time.time()
    derived = OUT / f"train_cache_{o['n_synth']}_k{o['k']}.pt"  # this recipe's prefix and the teacher, kept
    if derived.is_file():
        d = torch.load(derived, weights_only=True)
        feats, teacher = d["feats"].float(), d["teacher"]
    else:
        with torch.no_grad():  # cached K_CACHE prefix -> this recipe's prefix; and the teacher (ImageNet pooled)
            f2 = data["feats"]
            feats, teacher = [], []
            for i in range(0, len(f2), 256):
                f = f2[i:i + 256].float()
                pooled = bb.forward_from(f, stages - K_CACHE).mean(dim=(2, 3))
                teacher.append(F.normalize(pooled, dim=1).half())
                if o["k"] < 0:
                    feats.append(pooled)
                else:
                    for stage in bb.stages[stages - K_CACHE: split.split]:
                        f = stage(f)
                    feats.append(f)
            feats, teacher = torch.cat(feats), torch.cat(teacher)
        torch.save({"feats": feats, "teacher": teacher}, derived)
    loss_fn = create_loss("arcface", num_classes=len(classes), embedding_dim=256, margin=o["margin"], scale=30.0,
                          seed=o["seed"])
    head_params = list(model.head.parameters()) + list(loss_fn.parameters())
    trunk_params = [p for p in split.trainable_parameters() if all(p is not h for h in head_params)]
    anchor = [p.detach().clone() for p in trunk_params]
    optimizer = torch.optim.AdamW([{"params": trunk_params, "lr": o["lr"]}, {"params": head_params, "lr": o["head_lr"]}],
                                  weight_decay=o["wd"])
    steps = -(-len(feats) // o["batch"])
    total, warm = o["epochs"] * steps, steps

    def schedule(step):
        if step < warm:
            return (step + 1) / warm
        return float(0.5 * (1 + np.cos(np.pi * min(1.0, (step - warm) / max(1, total - warm)))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sets = None
    history = []
    gen = torch.Generator().manual_seed(o["seed"])
    print(name, o, f"{len(feats)} views, {len(classes)} classes, prep {time.time() - t0:.0f}s", flush=True)
    for epoch in range(1, o["epochs"] + 1):
        t = time.time()
        split.train()
        loss_fn.train()
        order = torch.randperm(len(feats), generator=gen)
        parts = np.zeros(3)
        for start in range(0, len(order), o["batch"]):
            idx = order[start:start + o["batch"]]
            z = split.suffix(feats[idx])
            arc = loss_fn(z, labels[idx])
            dis = similarity_distillation_loss(z, teacher[idx].float(), tau=o["tau"]) if o["distill"] > 0 else z.sum() * 0
            sp = sum(((p - a) ** 2).sum() for p, a in zip(trunk_params, anchor, strict=True)) if o["l2sp"] > 0 and trunk_params else z.sum() * 0
            loss = arc + o["distill"] * dis + o["l2sp"] * sp
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            parts += [float(arc.detach()), float(dis.detach()), float(sp.detach())]
        sets = sets or load_sets(wait=900)
        res, vecs = score(model, sets)
        history.append({"epoch": epoch, "arc": parts[0] / steps, "distill": parts[1] / steps, "l2sp": parts[2] / steps,
                        "seconds": round(time.time() - t, 1), **res})
        print(f"{name} epoch {epoch} arc {parts[0] / steps:.3f} dis {parts[1] / steps:.4f} sp {parts[2] / steps:.4f} "
              + " ".join(f"{n} {m['recall_at_1']:.3f}/{m['claim_auc']:.3f}" for n, m in res.items())
              + f" ({time.time() - t:.0f}s)", flush=True)
        json.dump({"options": o, "history": history}, open(OUT / f"recipe_{name}.json", "w"), indent=1)
    np.savez(OUT / f"recipe_{name}.npz", **{f"{n}_{w}": v for n, (r, q) in vecs.items() for w, v in (("refs", r), ("q", q))})
    torch.save(model.state_dict(), OUT / f"recipe_{name}.pt")


def cmd_baselines():
    sets = load_sets()
    shipped = resolve_model(str(SHIPPED)).load_embedder()
    imagenet = build_model(architecture="efficientnet_lite0", input_size=224, embedding_dim=256, seed=0)
    imagenet.head = torch.nn.Identity()
    for name, model in (("shipped", shipped), ("imagenet", imagenet)):
        res, vecs = score(model, sets)
        print(name, " ".join(f"{n} {m['recall_at_1']:.3f}/{m['claim_auc']:.3f}" for n, m in res.items()), flush=True)
        json.dump({"history": [res]}, open(OUT / f"recipe_{name}.json", "w"), indent=1)
        np.savez(OUT / f"recipe_{name}.npz", **{f"{n}_{w}": v for n, (r, q) in vecs.items() for w, v in (("refs", r), ("q", q))})


if __name__ == "__main__":
    if sys.argv[1] == "cache":
        cmd_cache(int(sys.argv[2]))
    elif sys.argv[1] == "train":
        cmd_train(sys.argv[2], sys.argv[3:])
    else:
        cmd_baselines()
