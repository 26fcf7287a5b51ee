"""training.plots: the files are written, and the AUC a ROC plot reports is scikit-learn's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from markguard.training.metrics import RocInput, roc_auc
from markguard.training.plots import plot_per_brand, plot_roc


def test_roc_plot_writes_the_file_and_reports_sklearns_auc(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.3
    risk = np.round(np.clip(rng.normal(0.35 + 0.3 * positive, 0.2), 0, 1), 2)  # rounded: ties, as real risks have
    similarity = rng.normal(0.5 + 0.2 * positive, 0.15)
    curves = {"fusion risk": RocInput(risk, positive, {"review": 0.5, "takedown": 0.8}),
              "similarity": RocInput(similarity, positive),
              "one class only": RocInput(similarity[:5], np.ones(5, bool))}
    path = tmp_path / "roc.png"
    aucs = plot_roc(curves, path, title="markguard-lite0-20261203-091205-f51fd1e6: claim verification " * 2)
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    assert aucs["fusion risk"] == roc_auc_score(positive, risk) and aucs["similarity"] == roc_auc_score(positive, similarity)
    assert math.isclose(aucs["fusion risk"], roc_auc(risk, positive), abs_tol=1e-12)  # the metrics module agrees
    assert math.isnan(aucs["one class only"])


def test_per_brand_plot_writes_the_file(tmp_path: Path) -> None:
    per_brand = {f"Brand{i}": {"recall_at_1": i / 10, "queries": 3 * i + 1} for i in range(11)}
    path = plot_per_brand(per_brand, tmp_path / "per_brand.png", title="recall@1 per brand")
    assert path.read_bytes().startswith(b"\x89PNG")
