"""RoFormer encoder: parity with transformers.RoFormerModel, checkpoint mapping, RoPE, entropy scale."""

import dataclasses
import json
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from models.roformer import (  # noqa: E402
    CheckpointMismatchError,
    RoFormerConfig,
    RoFormerEncoder,
    apply_rope,
    rope_table,
)

LENGTHS = [3, 17, 60, 33]  # a padded batch of 4 sequences of different lengths


def padded_batch(vocab_size: int, lengths=LENGTHS, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    ids = torch.randint(1, vocab_size, (len(lengths), T), generator=g) * mask
    types = torch.randint(0, 2, (len(lengths), T), generator=g) * mask
    return ids, mask, types


def hf_model(tmp_path, **kw):
    torch.manual_seed(0)
    cfg = transformers.RoFormerConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=128, **kw,
    )
    model = transformers.RoFormerModel(cfg).eval()
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("rotary_value", [False, True])
@pytest.mark.parametrize("embedding_size", [None, 24])
def test_parity_with_transformers(tmp_path, rotary_value, embedding_size):
    kw = {"rotary_value": rotary_value} | ({"embedding_size": embedding_size} if embedding_size else {})
    ref = hf_model(tmp_path, **kw)
    ours = RoFormerEncoder.from_pretrained(tmp_path).eval()
    ids, mask, types = padded_batch(99)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        got = ours(ids, mask, types)
    diff = ((want - got).abs() * mask[..., None]).max().item()  # padding rows are undefined in both
    assert diff < 1e-4


def test_all_hidden_states_match(tmp_path):
    ref = hf_model(tmp_path)
    ours = RoFormerEncoder.from_pretrained(tmp_path).eval()
    ids, mask, _ = padded_batch(99)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = ours(ids, mask, output_hidden_states=True)
    assert len(got) == len(want) == 3
    for w, g in zip(want, got):
        assert ((w - g).abs() * mask[..., None]).max().item() < 1e-4


def test_save_pretrained_loads_in_transformers(tmp_path):
    torch.manual_seed(1)
    ours = RoFormerEncoder(RoFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, intermediate_size=64,
                                          max_position_embeddings=64)).eval()
    ours.save_pretrained(tmp_path)
    ref = transformers.RoFormerModel.from_pretrained(tmp_path).eval()
    ids, mask, _ = padded_batch(50, lengths=[5, 40])
    with torch.no_grad():
        diff = (ref(input_ids=ids, attention_mask=mask).last_hidden_state - ours(ids, mask)).abs()
    assert (diff * mask[..., None]).max().item() < 1e-4
    again = RoFormerEncoder.from_pretrained(tmp_path)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_masked_lm_checkpoint_prefix_is_stripped(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.RoFormerConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=20, max_position_embeddings=32)
    transformers.RoFormerForMaskedLM(cfg).save_pretrained(tmp_path)  # keys "roformer.*" and "cls.*"
    enc = RoFormerEncoder.from_pretrained(tmp_path)
    assert enc.cfg.hidden_size == 16


def test_missing_and_misshaped_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_model(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["encoder.layer.1.attention.self.key.bias"]
    state["encoder.layer.0.output.dense.weight"] = torch.zeros(3, 3)
    state["encoder.layer.0.attention.self.rogue.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        RoFormerEncoder.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "missing keys (1): encoder.layer.1.attention.self.key.bias" in msg
    assert "unexpected keys (1): encoder.layer.0.attention.self.rogue.weight" in msg
    assert "encoder.layer.0.output.dense.weight: checkpoint (3, 3) vs model (32, 37)" in msg


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        RoFormerEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roformer"}))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        RoFormerEncoder.from_pretrained(tmp_path)


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    d = 16
    sin, cos = rope_table(64, d)
    q, k = torch.randn(d), torch.randn(d)
    # put the same q at position m and k at position n; the score depends on n - m only
    def score(m, n):
        return (apply_rope(q, sin[m], cos[m]) @ apply_rope(k, sin[n], cos[n])).item()

    for offset in (0, 1, 5, 20):
        ref = score(3, 3 + offset)
        for shift in (7, 30):
            assert score(3 + shift, 3 + offset + shift) == pytest.approx(ref, abs=1e-4)
    assert abs(score(3, 4) - score(3, 20)) > 1e-3  # and it does depend on the offset


def test_rope_is_a_rotation_of_interleaved_pairs():
    sin, cos = rope_table(8, 4)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0])
    y = apply_rope(x, sin[2], cos[2])
    theta0, theta1 = 2 * 1.0, 2 * 10000 ** (-2 / 4)
    expected = torch.tensor([math.cos(theta0), math.sin(theta0), -math.sin(theta1), math.cos(theta1)])
    assert torch.allclose(y, expected, atol=1e-6)
    assert torch.allclose(y.norm(), x.norm())


def test_encoder_is_shift_invariant_in_relative_terms():
    """With RoPE and no absolute positions, a sequence's outputs do not depend on padding length."""
    torch.manual_seed(0)
    enc = RoFormerEncoder(RoFormerConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32)).eval()
    ids = torch.randint(1, 30, (1, 9))
    with torch.no_grad():
        alone = enc(ids, torch.ones_like(ids))
        padded_ids = torch.cat([ids, torch.zeros(1, 20, dtype=torch.long)], 1)
        padded = enc(padded_ids, (torch.arange(29) < 9).long()[None])[:, :9]
    assert torch.allclose(alone, padded, atol=1e-5)


def test_entropy_invariant_scale():
    torch.manual_seed(0)
    cfg = RoFormerConfig(vocab_size=30, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=600)
    plain = RoFormerEncoder(cfg).eval()
    with torch.no_grad():  # sharpen attention so that its temperature matters
        for layer in plain.layers:
            layer.attn.query.weight.normal_(std=0.5)
            layer.attn.key.weight.normal_(std=0.5)
    scaled = RoFormerEncoder(dataclasses.replace(cfg, entropy_invariant_scale=True)).eval()
    scaled.load_state_dict(plain.state_dict())
    with torch.no_grad():
        short = torch.randint(1, 30, (1, 40))
        assert (plain(short) - scaled(short)).abs().max() > 1e-3  # changes outputs when on
        # and the change is exactly a temperature log_512(n) on the scores: fold it into the query
        factor = math.log(40) / math.log(512)
        folded = RoFormerEncoder(cfg).eval()
        folded.load_state_dict(plain.state_dict())
        for layer in folded.layers:
            layer.attn.query.weight.mul_(factor)
            layer.attn.query.bias.mul_(factor)
        assert torch.allclose(folded(short), scaled(short), atol=1e-5)
        # below the floor n = 16, n counts as 16
        tiny = short[:, :5]
        folded16 = RoFormerEncoder(cfg).eval()
        folded16.load_state_dict(plain.state_dict())
        for layer in folded16.layers:
            layer.attn.query.weight.mul_(math.log(16) / math.log(512))
            layer.attn.query.bias.mul_(math.log(16) / math.log(512))
        assert torch.allclose(folded16(tiny), scaled(tiny), atol=1e-5)
        # n = 512 real tokens: log_512(512) = 1, so the scale is exactly 1/sqrt(d)
        full = torch.randint(1, 30, (1, 512))
        assert torch.allclose(plain(full), scaled(full), atol=1e-5)
        # padding does not count in n: 512 real tokens + padding still gives the plain scale
        padded = torch.cat([full, torch.zeros(1, 50, dtype=torch.long)], 1)
        mask = (torch.arange(562) < 512).long()[None]
        assert torch.allclose(plain(padded, mask)[:, :512], scaled(padded, mask)[:, :512], atol=1e-5)
    off = RoFormerConfig()
    assert off.entropy_invariant_scale is False


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="num_attention_heads"):
        RoFormerConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="hidden_act"):
        RoFormerConfig(hidden_act="mystery")


@pytest.mark.parametrize("rotary_value", [False, True])
def test_half_rope_layout_computes_the_same_encoder(rotary_value):
    """use_half_rope_ (export) permutes q/k (and v) channels per head: same outputs, no strided rotation."""
    import copy

    from models.roformer import half_layout, rotate_half, rotate_interleaved, use_half_rope_

    x = torch.randn(2, 3, 5, 8)
    order = half_layout(8)
    sin, cos = rope_table(5, 8)
    hsin, hcos = rope_table(5, 8, half=True)
    assert torch.allclose(apply_rope(x[..., order], hsin, hcos, half=True), apply_rope(x, sin, cos)[..., order])
    assert torch.equal(rotate_half(x[..., order]), rotate_interleaved(x)[..., order])

    cfg = RoFormerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, max_position_embeddings=64, rotary_value=rotary_value)
    torch.manual_seed(0)
    enc = RoFormerEncoder(cfg).eval()
    half = use_half_rope_(copy.deepcopy(enc))
    assert all(layer.attn.rope_half for layer in half.layers)
    ids, mask, types = padded_batch(50)
    with torch.no_grad():
        want, got = enc(ids, mask, types), half(ids, mask, types)
    assert torch.allclose(got, want, atol=1e-5)
    use_half_rope_(half)  # a second call changes nothing
    with torch.no_grad():
        assert torch.allclose(half(ids, mask, types), want, atol=1e-5)
