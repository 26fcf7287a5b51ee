"""CI smoke test: one tiny epoch through the default code path → an artifact that loads and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from markguard.training.data import load_images, make_eval_set, read_items
from markguard.vision.artifact import load_artifact
from markguard.vision.embed import embed_images
from markguard.vision.evidence import ClaimEvidence
from markguard.vision.index import KIND_CODES, ReferenceIndex
from markguard.vision.scoring import Fusion, embedding_evidence
from markguard.vision.signals import compute_signals


def test_tiny_run_writes_a_loadable_artifact_that_scores(tiny_run: Path, tiny_grocery: Path) -> None:
    artifact = load_artifact(tiny_run / "artifact")
    model = artifact.load_embedder()
    assert artifact.embedder.head == "linear" and artifact.embedder.embedding_dim == 32
    fusion = Fusion(artifact.fusion)
    assert fusion.kind == "logistic" and not fusion.provisional
    assert 0 <= fusion.policy.review_at <= fusion.policy.takedown_at <= 1
    card = artifact.card
    for key in ("config", "git_commit", "metrics", "operating_points", "data"):
        assert key in card
    assert card["data"]["manifest_hash"] and "grocery_val" in card["metrics"]

    es = make_eval_set(read_items(tiny_grocery), split="val")
    refs = embed_images(model, load_images(es.references))
    index = ReferenceIndex(refs.shape[1])
    brands = sorted({r.brand for r in es.references})
    products = sorted({r.product for r in es.references})
    index.add(np.arange(len(refs)), refs, brand_ids=np.array([brands.index(r.brand) for r in es.references]),
              product_ids=np.array([products.index(r.product) for r in es.references]),
              kinds=np.full(len(refs), KIND_CODES["genuine"]))
    query = embed_images(model, load_images(es.queries[:1]))[0]
    q = es.queries[0]
    values = compute_signals(ClaimEvidence(brand=q.brand, embedding=embedding_evidence(
        index, query, brand_id=brands.index(q.brand), product_id=products.index(q.product))))
    risk, signals = fusion.risk(values)
    assert 0.0 <= risk <= 1.0 and set(signals) >= {"genuine_similarity", "margin"}


def test_run_folder_has_config_metrics_plots_checkpoint_and_bentoml(tiny_run: Path) -> None:
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["optim"]["epochs"] == 1 and config["model"]["input_size"] == 64
    history = json.loads((tiny_run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1] and np.isfinite(history[1]["train_loss"])
    for png in ("loss.png", "roc_grocery_val.png", "per_brand_grocery_val.png"):
        assert (tiny_run / png).stat().st_size > 1000
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and state["config"] == config
    assert any((tiny_run / "bentoml" / "models").rglob("card.json"))


def test_resume_continues_from_the_checkpoint(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from markguard.training.train import main

    run = tmp_path / "resumed"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["optim"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))
    assert main(["--resume", str(run), "--no-bentoml", "--quiet"]) == 0
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    card = load_artifact(run / "artifact").card
    assert card["config"]["optim"]["epochs"] == 2
    assert {"train", "eval/grocery_val/queries"} <= set(card["training"]["feature_cache_reused"])


def test_resume_recomputes_cached_features_whose_inputs_changed(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from markguard.training.train import main

    run = tmp_path / "changed"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["eval"]["max_regions"] = 2  # same photos, other query regions: the eval caches are stale
    (run / "config.json").write_text(json.dumps(config))
    assert main(["--resume", str(run), "--no-bentoml", "--quiet"]) == 0
    reused = load_artifact(run / "artifact").card["training"]["feature_cache_reused"]
    assert "train" in reused and not any(k.startswith("eval/") for k in reused)


def test_evaluate_command_prints_and_writes_metrics(tiny_run: Path, tiny_synth: Path, tmp_path: Path, capsys) -> None:
    from markguard.serving.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_run / "artifact"), "--manifest", str(tiny_synth), "--split", "val",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "recall_at_1" in printed and "counterfeit transform" in printed
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    for key in ("recall_at_1", "recall_at_5", "map_at_r", "claim_auc", "claim_tpr_at_fpr_1pct",
                "claim_tpr_at_fpr_5pct", "per_brand", "counterfeit_flagged_by_transform",
                "counterfeit_flagged_by_strength"):
        assert key in metrics
    assert (out / "roc.png").is_file()


def test_bench_embedder_prints_both_models(tiny_run: Path, tiny_grocery: Path, tiny_synth: Path, tmp_path: Path,
                                           capsys) -> None:
    import shutil

    from markguard.training.benchmarks.embedder import main

    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_run / "artifact", artifact)
    assert main(["--model", str(artifact), "--grocery", str(tiny_grocery), "--synth", str(tiny_synth),
                 "--quiet", "--card"]) == 0
    printed = capsys.readouterr().out
    assert "imagenet" in printed and "grocery val" in printed and "synthetic held-out" in printed
    assert "95% CI" in printed and "regions per query" in printed
    assert "regions overlap the true mark box" in printed  # synthetic photos carry mark boxes
    assert "same regions (trained model)" in printed  # the tiny run has a mark detector: the ablation rows
    bench = json.loads((artifact / "card.json").read_text())["bench_embedder"]
    assert bench["queries_as"].startswith("full photo") and "--card" in bench["command"]
    for result in bench["results"].values():
        lo, hi = result["trained"]["ci95"]["claim_auc"]
        assert lo <= result["trained"]["claim_auc"] <= hi
    synthetic = next(r for name, r in bench["results"].items() if name.startswith("synthetic"))
    for found in synthetic["proposals_find_mark"].values():  # imagenet's regions and the trained model's
        assert 0.0 <= found["share_found"] <= 1.0 and found["photos"] > 0
    assert set(synthetic["trained_minus_imagenet_on_trained_regions_ci95"]) == {"recall_at_1", "claim_auc"}
    assert "brands resampled" in printed and "claim AUC vs counterfeits by" in printed
    assert synthetic["brands"] >= 1
    for label in ("imagenet", "trained"):  # brands resampled: an interval about the same estimate
        lo, hi = synthetic[label]["ci95_by_brand"]["recall_at_1"]
        assert lo <= synthetic[label]["recall_at_1"] <= hi
        by_transform = synthetic[label]["claim_auc_by_transform"]
        assert by_transform and all(0.0 <= t["auc"] <= 1.0 and t["count"] > 0 for t in by_transform.values())
    load_artifact(artifact)  # still a valid artifact


def test_the_tag_hash_covers_embedder_detector_and_fusion() -> None:
    import torch

    from markguard.training.card import model_hash

    embedder, detector = {"w": torch.ones(3)}, {"d": torch.zeros(2)}
    fusion = {"kind": "logistic", "review_at": 0.4, "takedown_at": 0.9}
    base = model_hash(embedder, detector=detector, fusion=fusion)
    assert len(base) == 8 and base == model_hash({"w": torch.ones(3)}, detector={"d": torch.zeros(2)}, fusion=dict(fusion))
    assert base != model_hash({"w": torch.ones(3) * 2}, detector=detector, fusion=fusion)
    assert base != model_hash(embedder, detector={"d": torch.ones(2)}, fusion=fusion)
    assert base != model_hash(embedder, detector=None, fusion=fusion)
    assert base != model_hash(embedder, detector=detector, fusion={**fusion, "takedown_at": 0.95})


def test_bench_embedder_refuses_a_held_out_set_holding_training_brands(tiny_run: Path, tiny_synth: Path) -> None:
    from markguard.training.benchmarks.embedder import main

    with pytest.raises(SystemExit, match="not held out"):
        main(["--model", str(tiny_run / "artifact"), "--grocery", "", "--synth", str(tiny_synth),
              "--synth-split", "train", "--quiet"])
