"""CoSENT and in-batch contrastive losses against brute-force / hand computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import cosent_loss, in_batch_contrastive_loss, simcse_loss


def cosent_brute(cos, labels, groups=None, lam=20.0):
    total = 1.0
    n = len(cos)
    for p in range(n):
        for q in range(n):
            same = groups is None or groups[p] == groups[q]
            if labels[p] > labels[q] and same:
                total += math.exp(lam * (cos[q] - cos[p]))
    return math.log(total)


@pytest.mark.parametrize("labels", [[1, 0, 1, 0, 0, 1], [5, 0, 3, 3, 1, 4], [0.2, 0.9, 0.5, 0.5, 0.1, 0.0]])
def test_cosent_equals_double_loop(labels):
    torch.manual_seed(0)
    cos = torch.rand(6) * 2 - 1
    got = cosent_loss(cos=cos, labels=torch.tensor(labels, dtype=torch.float32))
    assert got.item() == pytest.approx(cosent_brute(cos.tolist(), labels), rel=1e-5)


def test_cosent_groups_and_degenerate_batches():
    cos = torch.tensor([0.9, 0.1, 0.3, 0.8])
    labels = torch.tensor([1.0, 0.0, 5.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    got = cosent_loss(cos=cos, labels=labels, groups=groups)
    assert got.item() == pytest.approx(cosent_brute(cos.tolist(), labels.tolist(), groups.tolist()), rel=1e-5)
    # all labels equal: nothing ordered -> log(1) = 0, and backward still works
    c = torch.tensor([0.2, 0.4], requires_grad=True)
    loss = cosent_loss(cos=c, labels=torch.tensor([1.0, 1.0]))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(c.grad, torch.zeros(2))
    # a large margin stays finite (logsumexp, not a sum of exps)
    assert math.isfinite(cosent_loss(cos=torch.tensor([-1.0, 1.0]), labels=torch.tensor([1.0, 0.0]),
                                     scale=1000.0).item())


def test_cosent_keyword_only():
    with pytest.raises(TypeError):
        cosent_loss(torch.zeros(2), torch.zeros(2))


def test_contrastive_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    s = 20.0
    # cos(a0,b0)=1/sqrt2, cos(a0,b1)=0, cos(a1,b0)=1/sqrt2, cos(a1,b1)=1
    r = 1 / math.sqrt(2)
    row0 = -(s * r) + math.log(math.exp(s * r) + math.exp(0.0))
    row1 = -(s * 1.0) + math.log(math.exp(s * r) + math.exp(s * 1.0))
    got = in_batch_contrastive_loss(anchors=a, positives=b, scale=s)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # symmetric: the average with b picking a
    col0 = -(s * r) + math.log(math.exp(s * r) + math.exp(s * r))
    col1 = -(s * 1.0) + math.log(math.exp(0.0) + math.exp(s * 1.0))
    sym = in_batch_contrastive_loss(anchors=a, positives=b, scale=s, symmetric=True)
    assert sym.item() == pytest.approx(((row0 + row1) / 2 + (col0 + col1) / 2) / 2, rel=1e-5)
    ref = F.cross_entropy(s * F.normalize(a) @ F.normalize(b).T, torch.arange(2))
    assert got.item() == pytest.approx(ref.item())


def simcse_brute(a, p, n, same, scale):
    a, p = F.normalize(a, dim=-1), F.normalize(p, dim=-1)
    n = F.normalize(n, dim=-1) if n is not None else torch.zeros(0, a.shape[1])
    total = 0.0
    for i in range(len(a)):
        cands = [scale * float(a[i] @ p[j]) for j in range(len(p)) if j == i or not same[i][j]]
        cands += [scale * float(a[i] @ n[m]) for m in range(len(n))]
        own = scale * float(a[i] @ p[i])
        total += math.log(sum(math.exp(c) for c in cands)) - own
    return total / len(a)


def test_simcse_equals_a_loop_over_candidates():
    torch.manual_seed(0)
    a, p, n = torch.randn(5, 8), torch.randn(5, 8), torch.randn(3, 8)
    ids = torch.tensor([0, 1, 1, 2, 3])  # rows 1 and 2 share their anchor
    same = (ids[:, None] == ids[None, :])
    got = simcse_loss(anchors=a, positives=p, negatives=n, same_anchor=same, scale=20.0)
    assert got.item() == pytest.approx(simcse_brute(a, p, n, same.tolist(), 20.0), rel=1e-5)
    # masking rows of the same anchor changes the loss; no negatives, no mask: the in-batch loss
    unmasked = simcse_loss(anchors=a, positives=p, negatives=n, scale=20.0)
    assert unmasked.item() == pytest.approx(simcse_brute(a, p, n, [[False] * 5] * 5, 20.0), rel=1e-5)
    assert unmasked.item() != pytest.approx(got.item())
    plain = simcse_loss(anchors=a, positives=p, negatives=torch.zeros(0, 8), scale=5.0)
    assert plain.item() == pytest.approx(in_batch_contrastive_loss(anchors=a, positives=p, scale=5.0).item(), rel=1e-6)


def test_simcse_hard_negatives_push_apart():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.1], [0.1, 1.0]])
    near = simcse_loss(anchors=a, positives=p, negatives=torch.tensor([[1.0, 0.0]]), scale=20.0)
    far = simcse_loss(anchors=a, positives=p, negatives=torch.tensor([[-1.0, 0.0]]), scale=20.0)
    assert near.item() > far.item() + 0.3 and far.item() < 0.01  # row 0: the negative ties its positive
    near.backward()
    assert torch.isfinite(a.grad).all()
    with pytest.raises(ValueError, match="same_anchor must be"):
        simcse_loss(anchors=a, positives=p, same_anchor=torch.zeros(3, 3, dtype=torch.bool))


def test_simcse_is_fp32_under_bf16_autocast():
    torch.manual_seed(1)
    a, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(2, 8)
    same = torch.tensor([0, 0, 1, 2])[:, None] == torch.tensor([0, 0, 1, 2])[None, :]
    ref = simcse_loss(anchors=a, positives=p, negatives=n, same_anchor=same)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = simcse_loss(anchors=a, positives=p, negatives=n, same_anchor=same)
    assert got.dtype == torch.float32 and got.item() == pytest.approx(ref.item(), rel=1e-6)
