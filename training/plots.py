"""Training plots as PNG (matplotlib, Agg backend): loss, ROC curves, per-brand recall."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_loss", "plot_roc", "plot_per_brand"]


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


def plot_roc(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, *, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_per_brand(per_brand: Mapping[str, Mapping[str, Any]], path: Path, *, title: str) -> Path:
    names = sorted(per_brand)
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names)), 4))
    ax.bar(range(len(names)), [per_brand[n]["recall_at_1"] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    ax.set(ylabel="recall@1", ylim=(0, 1), title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
