"""Pooling modes against hand computations; the linear pooler's HF checkpoint keys; l2_normalize."""

import pytest
import torch

from models.pooling import POOLING_MODES, Pooling, l2_normalize
from models.roformer import CheckpointMismatchError

B, T, H = 2, 4, 3
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
PAD = 1e6  # padding tokens carry huge values: any leak shows


def hidden_states(n_layers: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Embedding output + n_layers layers, (B, T, H) each, padding positions set to PAD."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_layers + 1):
        x = torch.randn(B, T, H, generator=g)
        out.append(x.masked_fill(~MASK.bool()[..., None], PAD))
    return tuple(out)


def hand_mean(x: torch.Tensor, b: int) -> list[float]:
    rows = [x[b, t] for t in range(T) if MASK[b, t]]
    return [sum(float(r[h]) for r in rows) / len(rows) for h in range(H)]


def test_modes_are_a_closed_list():
    assert POOLING_MODES == ("cls", "mean", "first-last-avg", "linear")
    with pytest.raises(ValueError, match="unknown pooling mode 'max'"):
        Pooling("max", H)


def test_cls_takes_token_zero_of_the_last_layer():
    hs = hidden_states()
    pool = Pooling("cls", H)
    assert not pool.needs_hidden_states
    torch.testing.assert_close(pool(hs, MASK), hs[-1][:, 0])
    torch.testing.assert_close(pool(hs[-1], MASK), hs[-1][:, 0])  # a bare tensor is the last layer


def test_mean_ignores_padding():
    hs = hidden_states()
    got = Pooling("mean", H)(hs[-1], MASK)
    want = torch.tensor([hand_mean(hs[-1], b) for b in range(B)])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert got.abs().max() < 10


def test_first_last_avg_uses_first_transformer_layer_and_last_layer():
    hs = hidden_states(n_layers=3)
    pool = Pooling("first-last-avg", H)
    assert pool.needs_hidden_states
    got = pool(hs, MASK)
    want = torch.tensor(
        [[(f + l) / 2 for f, l in zip(hand_mean(hs[1], b), hand_mean(hs[3], b))] for b in range(B)]
    )
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs all hidden states"):
        pool(hs[-1], MASK)


def linear_state(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embeddings.word_embeddings.weight": torch.zeros(10, H),  # encoder keys are ignored
        "pooler.dense.weight": torch.randn(H, H, generator=g),
        "pooler.dense.bias": torch.randn(H, generator=g),
    }


def test_linear_pooler_loads_hf_keys_and_applies_w_cls_plus_b_without_activation():
    hs = hidden_states()
    state = linear_state()
    pool = Pooling("linear", H)
    pool.load_hf_state_dict(state)
    cls = hs[-1][:, 0]
    want = torch.stack([
        torch.tensor([
            sum(float(state["pooler.dense.weight"][o, i]) * float(cls[b, i]) for i in range(H))
            + float(state["pooler.dense.bias"][o])
            for o in range(H)
        ])
        for b in range(B)
    ])
    torch.testing.assert_close(pool(hs, MASK), want, rtol=1e-5, atol=1e-5)
    assert (want < 0).any()  # no tanh/relu: negative and large outputs pass through
    assert set(pool.hf_state_dict()) == {"pooler.dense.weight", "pooler.dense.bias"}
    torch.testing.assert_close(pool.hf_state_dict()["pooler.dense.weight"], state["pooler.dense.weight"])


def test_linear_pooler_accepts_roformer_prefix():
    state = {"roformer." + k: v for k, v in linear_state().items()}
    pool = Pooling("linear", H)
    pool.load_hf_state_dict(state)
    torch.testing.assert_close(pool.dense.bias, state["roformer.pooler.dense.bias"])


def test_linear_pooler_missing_or_misshaped_key_is_named():
    state = linear_state()
    del state["pooler.dense.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(1\): pooler\.dense\.bias"):
        Pooling("linear", H).load_hf_state_dict(state)
    state = linear_state() | {"pooler.dense.weight": torch.zeros(H, H + 1)}
    want = r"pooler\.dense\.weight: checkpoint \(3, 4\) vs model \(3, 3\)"
    with pytest.raises(CheckpointMismatchError, match=want):
        Pooling("linear", H).load_hf_state_dict(state)


@pytest.mark.parametrize("mode", ["cls", "mean", "first-last-avg"])
def test_other_modes_have_no_weights_and_ignore_checkpoints(mode):
    pool = Pooling(mode, H)
    pool.load_hf_state_dict({})
    assert pool.hf_state_dict() == {}
    assert len(list(pool.parameters())) == 0


def test_l2_normalize():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    torch.testing.assert_close(l2_normalize(x), torch.tensor([[0.6, 0.8], [0.0, 0.0]]))
