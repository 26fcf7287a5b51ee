"""Training plots as PNG (matplotlib, Agg backend): loss, ROC curves, per-brand recall."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from markguard.training.metrics import RocInput  # noqa: E402

__all__ = ["RocInput", "plot_loss", "plot_roc", "plot_per_brand"]


def plot_loss(history: Sequence[Mapping[str, Any]], path: Path) -> Path:
    epochs = [h["epoch"] for h in history if "train_loss" in h]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(epochs, [h["train_loss"] for h in history if "train_loss" in h], marker="o")
    ax[0].set(xlabel="epoch", ylabel="ArcFace loss", title="training loss")
    for key in sorted({k for h in history for k in h.get("val", {})}):
        xs = [h["epoch"] for h in history if key in h.get("val", {})]
        for metric, style in (("recall_at_1", "-o"), ("claim_auc", "--s")):
            ax[1].plot(xs, [h["val"][key].get(metric, float("nan")) for h in history if key in h.get("val", {})],
                       style, label=f"{key} {metric}")
    ax[1].set(xlabel="epoch (0: ImageNet baseline)", title="validation", ylim=(0, 1))
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(curves: Mapping[str, RocInput], path: Path, *, title: str) -> dict[str, float]:
    """ROC curves by scikit-learn (`roc_curve`, `auc`), each with its AUC and counts in the legend and
    its operating points marked; returns each curve's AUC (NaN when one class is missing)."""
    fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
    aucs: dict[str, float] = {}
    for (name, curve), colour in zip(curves.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4,
                                     strict=False):
        scores, positive = np.asarray(curve.scores, dtype=np.float64), np.asarray(curve.positive, dtype=bool)
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if not n_pos or not n_neg:
            aucs[name] = float("nan")
            continue
        fpr, tpr, _ = roc_curve(positive, scores)
        aucs[name] = float(auc(fpr, tpr))
        ax.plot(fpr, tpr, color=colour, label=f"{name}\nAUC = {aucs[name]:.3f} ({n_pos} positive, {n_neg} negative)")
        for (point, threshold), marker in zip(sorted(curve.operating_points.items(), key=lambda kv: kv[1]), "os^D",
                                              strict=False):
            x, y = float((scores[~positive] >= threshold).mean()), float((scores[positive] >= threshold).mean())
            ax.plot([x], [y], marker=marker, color=colour, markersize=8, markeredgecolor="black", linestyle="none",
                    label=f"{point} at {threshold:.3f}: TPR {y:.3f}, FPR {x:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return aucs


def plot_per_brand(per_brand: Mapping[str, Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """recall@1 per brand, each bar labelled with its value and its number of queries."""
    names = sorted(per_brand)
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names)), 4.5), layout="constrained")
    bars = ax.bar(range(len(names)), [per_brand[n]["recall_at_1"] for n in names])
    ax.bar_label(bars, labels=[f"{per_brand[n]['recall_at_1']:.2f}\nn={per_brand[n]['queries']}" for n in names],
                 fontsize=6, padding=2)
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    ax.set(ylabel="recall@1", ylim=(0, 1.18))
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
