"""ArcFace against a per-sample loop written straight from the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch

from markguard.training.losses import ArcFaceLoss


def _naive_arcface(emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, m: float, s: float) -> float:
    total = 0.0
    for i in range(len(emb)):
        e = emb[i] / emb[i].norm()
        logits = []
        for j in range(len(proxies)):
            w = proxies[j] / proxies[j].norm()
            cos = float(e @ w)
            if j == int(labels[i]):
                theta = math.acos(max(-1 + 1e-7, min(1 - 1e-7, cos)))
                cos = math.cos(theta + m) if theta + m <= math.pi else cos - m * math.sin(m)
            logits.append(s * cos)
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_z - logits[int(labels[i])]
    return total / len(emb)


@pytest.mark.parametrize(("margin", "scale", "seed"), [(0.2, 30.0, 0), (0.5, 10.0, 1), (0.0, 1.0, 2), (3.0, 16.0, 3)])
def test_arcface_matches_naive_loop(margin: float, scale: float, seed: int) -> None:
    torch.manual_seed(seed)
    loss = ArcFaceLoss(num_classes=4, embedding_dim=5, margin=margin, scale=scale, seed=seed).double()
    emb = torch.randn(6, 5, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    got = loss(emb, labels).item()
    assert got == pytest.approx(_naive_arcface(emb, labels, loss.proxies.detach(), margin, scale), rel=1e-6)


def test_arcface_decreases_when_an_embedding_moves_to_its_proxy_and_checks_inputs() -> None:
    loss = ArcFaceLoss(num_classes=3, embedding_dim=4, seed=0)
    labels = torch.tensor([1])
    far = loss(-loss.proxies[1:2].detach(), labels).item()
    near = loss(loss.proxies[1:2].detach(), labels).item()
    assert near < far
    with pytest.raises(ValueError):
        loss(torch.randn(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError):
        loss(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(FloatingPointError):
        loss(torch.full((1, 4), float("nan")), torch.tensor([0]))


def test_counterfeit_pair_loss_against_a_naive_loop() -> None:
    from markguard.training.losses import counterfeit_pair_loss

    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(12, 8, generator=gen)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3])
    genuine = torch.tensor([1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1], dtype=torch.bool)
    z = torch.nn.functional.normalize(emb, dim=1)
    terms = []
    for a in range(12):
        if not genuine[a]:
            continue
        pos = [float(z[a] @ z[p]) for p in range(12) if p != a and groups[p] == groups[a] and genuine[p]]
        neg = [float(z[a] @ z[n]) for n in range(12) if groups[n] == groups[a] and not genuine[n]]
        if pos and neg:
            terms.append(max(0.0, max(neg) - sum(pos) / len(pos) + 0.1))
    assert len(terms) == 5  # group 2 has one genuine view (no positive), group 3 no counterfeit
    got = counterfeit_pair_loss(emb, groups, genuine, margin=0.1)
    assert abs(float(got) - sum(terms) / len(terms)) < 1e-5
    assert float(counterfeit_pair_loss(emb, groups, torch.ones(12, dtype=torch.bool), margin=0.1)) == 0.0


def test_pair_batches_draw_same_brand_genuine_and_counterfeit_views() -> None:
    from types import SimpleNamespace

    from markguard.training.train import PairBatches

    items = [SimpleNamespace(brand=b, genuine=g) for b, g in
             [("A", True), ("A", True), ("A", False), ("B", True), ("B", True), ("B", False), ("C", True)]]
    owner = torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 5, 6])  # two views of some photos
    pairs = PairBatches(items, owner, brands=5, views=2, seed=0)
    assert len(pairs.groups) == 2 and pairs.brands == 2  # C has no counterfeit
    view, group, genuine = pairs.draw(pairs.epoch(1))
    for v, g, real in zip(view.tolist(), group.tolist(), genuine.tolist(), strict=True):
        item = items[int(owner[v])]
        assert item.genuine == real
        assert all(items[int(owner[w])].brand == item.brand for w, h in zip(view.tolist(), group.tolist(), strict=True)
                   if h == g)
    assert genuine.sum() == 4 and (~genuine).sum() == 3  # 2 genuine per brand; A has 1 fake view, B 2
    assert torch.equal(view, pairs.draw(pairs.epoch(1))[0])  # seeded per epoch


def test_similarity_distillation_against_a_naive_loop_and_zero_when_geometry_matches() -> None:
    from markguard.training.losses import similarity_distillation_loss

    gen = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(6, 8, generator=gen), torch.randn(6, 20, generator=gen)
    tau = 0.2
    s = torch.nn.functional.normalize(student, dim=1)
    t = torch.nn.functional.normalize(teacher, dim=1)
    total = 0.0
    for i in range(6):
        others = [j for j in range(6) if j != i]
        ls = torch.tensor([float(s[i] @ s[j]) / tau for j in others])
        lt = torch.tensor([float(t[i] @ t[j]) / tau for j in others])
        ps, pt = torch.softmax(ls, 0), torch.softmax(lt, 0)
        total += float((pt * (pt.log() - ps.log())).sum())
    got = similarity_distillation_loss(student, teacher, tau=tau)
    assert math.isclose(float(got), total / 6, rel_tol=1e-4, abs_tol=1e-6)
    # a rotation of the teacher (same cosines, other dimension) gives zero; scaling rows does not matter
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen))
    assert float(similarity_distillation_loss(3.0 * teacher @ q, teacher, tau=tau)) < 1e-5
    # gradients reach the student only
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    similarity_distillation_loss(student, teacher, tau=tau).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and teacher.grad is None
    with pytest.raises(ValueError):
        similarity_distillation_loss(student[:1], teacher[:1], tau=tau)


def test_distillation_in_train_one_epoch_keeps_the_imagenet_neighbourhoods() -> None:
    """`loss.distill_weight`: the teacher is the pretrained trunk's pooled vector of each cached view, and an
    epoch with the term leaves the embeddings' cosines closer to the teacher's than ArcFace alone does."""
    import torch.nn.functional as F

    from markguard.training.losses import create_loss, similarity_distillation_loss
    from markguard.training.model import SplitEmbedder, build_model
    from markguard.training.train import imagenet_teacher, train_one_epoch

    trainable_blocks = -1  # the projection on cached pooled features: the teacher is the cached vector itself
    gen = torch.Generator().manual_seed(0)
    shape = (1280,) if trainable_blocks < 0 else (320, 2, 2)
    centres = torch.rand((6, *shape), generator=gen) * 4  # 6 clusters the labels cut across
    feats = (centres[torch.arange(48) % 6] + torch.rand((48, *shape), generator=gen)).relu()
    labels = torch.randint(0, 4, (48,), generator=gen)

    def run(weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(architecture="efficientnet_lite0", input_size=224, embedding_dim=16, seed=0)
        split = SplitEmbedder(model, trainable_blocks=trainable_blocks)
        teacher = imagenet_teacher(split, feats, device="cpu")
        loss_fn = create_loss("arcface", num_classes=4, embedding_dim=16, margin=0.2, scale=30.0)
        params = split.trainable_parameters() + list(loss_fn.parameters())
        optimizer = torch.optim.Adam(params, lr=3e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        for epoch in range(1, 4):
            train_one_epoch(split, loss_fn, optimizer, scheduler, feats, labels, batch_size=16, epoch=epoch,
                            generator=torch.Generator().manual_seed(epoch), device="cpu", quiet=True,
                            teacher=teacher, distill_weight=weight, distill_tau=0.1)
        split.eval()
        with torch.no_grad():
            return split.suffix(feats), teacher.float()

    plain, teacher = run(0.0)
    kept, _ = run(20.0)
    ref = split_free = F.normalize(feats.flatten(1) if trainable_blocks < 0 else feats, dim=1)
    if trainable_blocks < 0:  # a frozen pooled cache: the teacher is the cached vector itself
        assert torch.allclose(teacher, ref, atol=1e-2) and split_free is ref
    mask = ~torch.eye(48, dtype=torch.bool)

    def agreement(z: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([(z @ z.T)[mask], (teacher @ teacher.T)[mask]]))[0, 1])

    assert agreement(kept) > agreement(plain) + 0.02
    assert float(similarity_distillation_loss(kept, teacher, tau=0.1)) < float(similarity_distillation_loss(plain, teacher, tau=0.1))
