"""Metric-learning losses. `MetricLoss.forward` checks the batch; subclasses only `compute_loss`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MetricLoss", "ArcFaceLoss", "counterfeit_pair_loss", "create_loss", "similarity_distillation_loss"]


class MetricLoss(nn.Module):
    """Base class: (N, D) finite embeddings and (N,) integer labels in, a finite scalar out."""

    def __init__(self, *, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_dim = embedding_dim

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(f"expected (N, {self.embedding_dim}) embeddings, got {tuple(embeddings.shape)}")
        if labels.shape != embeddings.shape[:1] or labels.dtype != torch.long:
            raise ValueError("labels must be an (N,) long tensor")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError("label out of range")
        loss = self.compute_loss(embeddings, labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{type(self).__name__}: non-finite loss {loss.item()}")
        return loss


class ArcFaceLoss(MetricLoss):
    """ArcFace (Deng et al. 2019): softmax over s·cos(θ), with the true class's angle widened by `margin`.

    One learned unit proxy per class; logits are s·cos(θ_j) for j ≠ y and s·cos(θ_y + m) for the true
    class (for θ_y + m > π the monotone extension cos(θ_y) − m·sin(m) keeps the logit decreasing).
    """

    def __init__(self, *, num_classes: int, embedding_dim: int, margin: float = 0.2, scale: float = 30.0,
                 seed: int = 0) -> None:
        super().__init__(num_classes=num_classes, embedding_dim=embedding_dim)
        self.margin = float(margin)
        self.scale = float(scale)
        gen = torch.Generator().manual_seed(seed)
        self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim, generator=gen) / math.sqrt(embedding_dim))

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        return F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(embeddings).clamp(-1 + 1e-7, 1 - 1e-7)
        cos_y = cos.gather(1, labels[:, None])
        theta = torch.acos(cos_y)
        widened = torch.where(theta + self.margin <= math.pi, torch.cos(theta + self.margin),
                              cos_y - self.margin * math.sin(self.margin))
        logits = cos.scatter(1, labels[:, None], widened) * self.scale
        return F.cross_entropy(logits, labels)


def create_loss(name: str, *, num_classes: int, embedding_dim: int, margin: float, scale: float,
                seed: int = 0) -> MetricLoss:
    if name != "arcface":
        raise ValueError(f"unknown loss {name!r}; known: ['arcface']")
    return ArcFaceLoss(num_classes=num_classes, embedding_dim=embedding_dim, margin=margin, scale=scale, seed=seed)


def counterfeit_pair_loss(embeddings: torch.Tensor, groups: torch.Tensor, genuine: torch.Tensor, *,
                          margin: float) -> torch.Tensor:
    """Each genuine view must be closer to its group's other genuine views (on average) than to the
    group's nearest counterfeit view, by `margin` in cosine: mean over anchors of
    relu(max_n cos(a, n) − mean_p cos(a, p) + margin). A group is one brand's mark; anchors without
    both a positive and a negative in the batch are skipped (0 when none has both)."""
    z = F.normalize(embeddings, dim=1)
    cos = z @ z.T
    same = groups[:, None] == groups[None, :]
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    positive = same & genuine[None, :] & ~eye
    negative = same & ~genuine[None, :]
    anchors = genuine & positive.any(1) & negative.any(1)
    if not anchors.any():
        return embeddings.sum() * 0.0
    pos = (cos * positive).sum(1) / positive.sum(1).clamp(min=1)
    neg = cos.masked_fill(~negative, -2.0).max(1).values
    return F.relu(neg - pos + margin)[anchors].mean()


def similarity_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, *, tau: float) -> torch.Tensor:
    """Keep a teacher's neighbourhoods: per row, KL(softmax(teacher cosines / tau) || softmax(student
    cosines / tau)) over the batch's other rows, averaged over rows. `student` (N, D) and `teacher`
    (N, E) are normalised here; N >= 2. Zero when the two cosine matrices agree off the diagonal."""
    if len(student) != len(teacher) or len(student) < 2:
        raise ValueError("student and teacher need the same N >= 2 rows")
    s, t = F.normalize(student, dim=1), F.normalize(teacher.detach(), dim=1)
    eye = torch.eye(len(s), dtype=torch.bool, device=s.device)
    log_p_s = F.log_softmax((s @ s.T / tau).masked_fill(eye, -1e9), dim=1)
    p_t = F.softmax((t @ t.T / tau).masked_fill(eye, -1e9), dim=1)
    return (p_t * (torch.log(p_t.clamp_min(1e-12)) - log_p_s)).masked_fill(eye, 0.0).sum(1).mean()
