"""GlobalPointer heads and losses: brute-force loss reference, sparse == dense, masking, fp16, RoPE."""

import math

import pytest
import torch

from models.global_pointer import (
    HEADS,
    EfficientGlobalPointer,
    GlobalPointer,
    global_pointer_loss,
    multilabel_categorical_crossentropy,
    sparse_global_pointer_loss,
)

H, C, D = 16, 3, 8
LENGTHS = [7, 4, 1]  # a padded batch, T = 7


def batch(seed: int = 0, lengths=LENGTHS, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    hidden = torch.randn(len(lengths), T, H, generator=g).to(dtype)
    return hidden, mask


def random_targets(mask: torch.Tensor, num_types: int, seed: int = 1, p: float = 0.2) -> torch.Tensor:
    """0/1 targets (B, C, T, T) on valid spans only (j >= i, both real tokens)."""
    g = torch.Generator().manual_seed(seed)
    B, T = mask.shape
    both_real = (mask[:, None, :, None] * mask[:, None, None, :]).bool()  # (B, 1, T, T)
    valid = both_real & torch.ones(T, T, dtype=torch.bool).triu()
    return ((torch.rand(B, num_types, T, T, generator=g) < p) & valid).long()


def to_spans(targets: torch.Tensor) -> torch.Tensor:
    """Dense 0/1 targets (B, C, T, T) -> flat indices i*T+j (B, C, K), padded with -1."""
    flat = targets.flatten(-2)  # (B, C, T*T)
    K = max(int(flat.sum(-1).max()), 1)
    spans = torch.full(flat.shape[:-1] + (K,), -1, dtype=torch.long)
    for b in range(flat.shape[0]):
        for c in range(flat.shape[1]):
            idx = flat[b, c].nonzero().flatten()
            spans[b, c, : len(idx)] = idx
    return spans


def brute_force_loss(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over (b, c) of log(1 + sum_neg e^s) + log(1 + sum_pos e^-s), one span at a time."""
    B, C_, T, _ = scores.shape
    total = 0.0
    for b in range(B):
        for c in range(C_):
            neg = pos = 0.0
            for i in range(T):
                for j in range(T):
                    s = float(scores[b, c, i, j])
                    if targets[b, c, i, j]:
                        pos += math.exp(-s)
                    else:
                        neg += math.exp(s)
            total += math.log1p(neg) + math.log1p(pos)
    return total / (B * C_)


def make(kind: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return HEADS[kind](H, C, D, max_len=32, **kw)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_registry_builds_both_heads_from_positional_args(kind):
    head = HEADS[kind](H, C, D)
    hidden, mask = batch()
    assert head(hidden, mask).shape == (3, C, 7, 7)
    assert isinstance(HEADS["gp"](H, C, D), GlobalPointer)
    assert isinstance(HEADS["egp"](H, C, D), EfficientGlobalPointer)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_loss_equals_brute_force_reference(kind):
    hidden, mask = batch()
    head = make(kind)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(2.0)  # spread the scores a little
        scores = head(hidden, mask)
    targets = random_targets(mask, C)
    assert targets.sum() > 5
    want = brute_force_loss(scores, targets)
    got = global_pointer_loss(scores=scores, targets=targets).item()
    assert got == pytest.approx(want, rel=1e-5)


def test_mcce_small_example_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    targets = torch.tensor([[1, 0, 0], [0, 0, 0]])
    want0 = math.log(1 + math.exp(-1.0) + math.exp(0.5)) + math.log(1 + math.exp(-2.0))
    want1 = math.log(1 + 3.0) + math.log(1.0)
    got = multilabel_categorical_crossentropy(logits=logits, targets=targets)
    torch.testing.assert_close(got, torch.tensor([want0, want1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_sparse_loss_equals_dense_loss_and_gradients(kind):
    hidden, mask = batch(seed=3)
    head = make(kind)
    targets = random_targets(mask, C, seed=4)
    spans = to_spans(targets)
    assert (spans == -1).any()  # padding exercised

    dense_scores = head(hidden, mask)
    dense = global_pointer_loss(scores=dense_scores, targets=targets)
    (g_dense,) = torch.autograd.grad(dense, dense_scores)
    sparse_scores = head(hidden, mask)
    sparse = sparse_global_pointer_loss(scores=sparse_scores, spans=spans)
    (g_sparse,) = torch.autograd.grad(sparse, sparse_scores)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-5, atol=1e-7)


def test_sparse_loss_exact_when_positives_dominate():
    """Su's log(1 - e^aux) form clips at 1e-7 here and is off by ~4.6; the scatter form stays exact."""
    T = 6
    scores = torch.full((1, 1, T, T), -20.0)
    spans = torch.tensor([[[0 * T + 2, 3 * T + 5, -1]]])  # (B, C, K)
    targets = torch.zeros(1, 1, T, T, dtype=torch.long)
    scores[0, 0, 0, 2] = scores[0, 0, 3, 5] = 20.0
    targets[0, 0, 0, 2] = targets[0, 0, 3, 5] = 1
    dense = global_pointer_loss(scores=scores, targets=targets)
    sparse = sparse_global_pointer_loss(scores=scores, spans=spans)
    want = math.log1p(34 * math.exp(-20.0)) + math.log1p(2 * math.exp(-20.0))  # ~7.6e-8
    assert dense.item() == pytest.approx(want, abs=1e-7)
    assert sparse.item() == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_masked_spans_are_far_below_threshold_even_with_large_weights(kind):
    head = make(kind)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 10.0)
    hidden, mask = batch(seed=5)
    with torch.no_grad():
        scores = head(hidden, mask) * 1.0
    B, T = mask.shape
    both_real = (mask[:, None, :, None] * mask[:, None, None, :]).bool()  # (B, 1, T, T)
    valid = both_real & torch.ones(T, T, dtype=torch.bool).triu()
    valid = valid.expand_as(scores)
    assert torch.isfinite(scores).all()
    assert (scores[~valid] < -1e4).all()
    assert (scores[~valid] == torch.finfo(torch.float32).min).all()
    assert not (scores > 0)[~valid].any()
    assert (scores > 0)[valid].any()  # real spans do cross the threshold: the check above is not vacuous


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_fp16_forward_is_finite_and_close_to_fp32(kind):
    head = make(kind)
    hidden, mask = batch(seed=6)
    with torch.no_grad():
        want = head(hidden, mask)
        got = head.half()(hidden.half(), mask)
    assert got.dtype == torch.float16
    assert torch.isfinite(got).all()
    masked = want == torch.finfo(torch.float32).min
    assert (got[masked] == torch.finfo(torch.float16).min).all()
    torch.testing.assert_close(got[~masked].float(), want[~masked], rtol=2e-2, atol=2e-2)
    loss = global_pointer_loss(scores=got, targets=random_targets(mask, C))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_rope_makes_scores_depend_on_relative_position_only(kind):
    head = make(kind)
    g = torch.Generator().manual_seed(7)
    T, shift = 12, 5
    hidden = torch.randn(1, T, H, generator=g)
    u, v = torch.randn(H, generator=g), torch.randn(H, generator=g)
    i, j = 1, 4
    hidden[0, i] = hidden[0, i + shift] = u
    hidden[0, j] = hidden[0, j + shift] = v
    with torch.no_grad():
        scores = head(hidden, torch.ones(1, T, dtype=torch.long))
    torch.testing.assert_close(scores[0, :, i, j], scores[0, :, i + shift, j + shift], rtol=1e-5, atol=1e-5)
    # and RoPE does see distance: the same pair at another distance scores differently
    hidden[0, j + 1] = v
    with torch.no_grad():
        moved = head(hidden, torch.ones(1, T, dtype=torch.long))
    assert (moved[0, :, i, j + 1] - scores[0, :, i, j]).abs().max() > 1e-3


def test_efficient_global_pointer_formula_without_rope():
    """logits[c, i, j] = q_i.k_j / sqrt(d) + (bias[j, 2c] + bias[i, 2c + 1]) / 2, q/k interleaved (Su)."""
    head = make("egp", rope=False)
    hidden, mask = batch(seed=8)
    with torch.no_grad():
        scores = head(hidden, mask)
        p = head.dense(hidden)  # (B, T, 2D)
        bias = head.bias(p)  # (B, T, 2C)
    for b, n in enumerate(LENGTHS):
        for c in range(C):
            for i in range(n):
                for j in range(i, n):
                    qk = torch.dot(p[b, i, ::2], p[b, j, 1::2]) / math.sqrt(D)
                    want = qk + (bias[b, j, 2 * c] + bias[b, i, 2 * c + 1]) / 2
                    assert scores[b, c, i, j].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-5)


def test_global_pointer_formula_without_rope():
    """Per type, the first head_size channels are q and the next head_size are k (bert4keras layout)."""
    head = make("gp", rope=False)
    hidden, mask = batch(seed=9)
    with torch.no_grad():
        scores = head(hidden, mask)
        x = head.dense(hidden).view(3, 7, C, 2 * D)
    b, c, i, j = 0, 2, 1, 5
    want = torch.dot(x[b, i, c, :D], x[b, j, c, D:]) / math.sqrt(D)
    assert scores[b, c, i, j].item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["gp", "egp"])
def test_gradients_flow_without_nan(kind):
    head = make(kind)
    hidden, mask = batch(seed=10)
    hidden.requires_grad_(True)
    targets = random_targets(mask, C, seed=11)
    loss = global_pointer_loss(scores=head(hidden, mask), targets=targets)
    loss = loss + sparse_global_pointer_loss(scores=head(hidden, mask), spans=to_spans(targets))
    loss.backward()
    grads = [p.grad for p in head.parameters()] + [hidden.grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert head.dense.weight.grad.abs().sum() > 0
    assert hidden.grad[2, 1:].abs().max() == 0  # padding tokens get no gradient


def test_rope_tables_are_not_in_the_state_dict():
    for kind in HEADS:
        assert not any("rope" in k for k in make(kind).state_dict())


@pytest.mark.parametrize("kind", ["gp", "egp"])
@pytest.mark.parametrize("rope", [True, False])
def test_half_rope_layout_computes_the_same_scores(kind, rope):
    import copy

    from models.roformer import use_half_rope_

    head = make(kind, rope=rope).eval()
    half = use_half_rope_(copy.deepcopy(head))
    hidden, mask = batch()
    with torch.no_grad():
        want, got = head(hidden, mask), half(hidden, mask)
    keep = want > torch.finfo(torch.float32).min
    assert torch.equal(keep, got > torch.finfo(torch.float32).min)
    assert torch.allclose(got[keep], want[keep], atol=1e-5)
