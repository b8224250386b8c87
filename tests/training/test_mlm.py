"""MLM pre-training: masking, packing, learning, the Hugging Face checkpoint, exact resume, CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.roformer import RoFormerConfig, RoFormerEncoder
from ropenlp.cli import app
from training.config import ConfigError
from training.batches import EpochBatches
from training.loop import build_optimizer, build_scheduler, train_steps
from models.mlm import IGNORE, RoFormerForMlm
from training.mlm import MaskingConfig, mask_tokens, pack_sequences, train_mlm

from .conftest import InterruptedBatches, tiny_mlm_config

transformers = pytest.importorskip("transformers")

SPECIALS = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
TINY = {"vocab_size": 40, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}


@pytest.fixture(scope="module")
def tiny_mlm():
    torch.manual_seed(0)
    model = RoFormerForMlm(RoFormerEncoder(RoFormerConfig(**TINY))).eval()
    with torch.no_grad():  # a non-trivial head, so a wrongly mapped key cannot pass by accident
        for p in model.head.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_masking_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (256, 512), generator=g)
    ids[:, 0], ids[:, 100], ids[:, 300:] = 2, 1, 0  # [CLS], an [UNK], padding
    ids[:, 200] = 3  # [SEP]
    inputs, targets = mask_tokens(ids, special_ids=SPECIALS, mask_id=4, vocab_size=1000, generator=g)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    chosen = targets != IGNORE
    assert not chosen[special].any() and torch.equal(inputs[special], ids[special])  # specials never touched
    assert torch.equal(targets[chosen], ids[chosen])
    assert chosen[~special].float().mean().item() == pytest.approx(0.15, abs=0.005)
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == 4).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.01)
    assert kept == pytest.approx(0.1 + 0.1 / 995, abs=0.01)  # kept, or "replaced" by itself
    assert 1 - as_mask - kept == pytest.approx(0.1, abs=0.01)
    replaced = inputs[chosen & (inputs != 4)]
    assert not torch.isin(replaced, torch.tensor(SPECIALS)).any()  # random ids are ordinary ones
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_masking_config_is_checked():
    with pytest.raises(ValueError):
        MaskingConfig(replace_mask=0.9, replace_random=0.2)


@pytest.mark.parametrize("mode", ["fill", "lines", "none"])
def test_packing_keeps_every_token(mode):
    rng = np.random.default_rng(0)
    lines = [("a.txt" if i < 30 else "b.txt", rng.integers(10, 99, rng.integers(1, 40))) for i in range(50)]
    seqs = pack_sequences(lines, max_length=16, cls_id=2, sep_id=3, pack=mode)
    assert all(len(s) <= 16 and s[0] == 2 for s in seqs)
    content = np.concatenate([s[1:] for s in seqs])
    assert content.tolist() == np.concatenate([np.append(ids, 3) for _, ids in lines]).tolist()
    if mode == "fill":  # full, except where a file ends
        assert sum(len(s) < 16 for s in seqs) <= 2
    if mode == "none":
        assert len(seqs) >= len(lines)


def test_masked_only_logits_equal_full_logits(tiny_mlm):
    ids = torch.randint(5, 40, (3, 20))
    targets = torch.full_like(ids, IGNORE)
    targets[:, ::4] = ids[:, ::4]
    with torch.no_grad():
        full, _ = tiny_mlm(ids)  # (B, T, V)
        some, loss = tiny_mlm(ids, targets=targets)  # (N, V)
    assert torch.allclose(some, full[targets != IGNORE], atol=1e-5)
    want = torch.nn.functional.cross_entropy(some, ids[:, ::4].reshape(-1))
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)


def test_checkpoint_loads_in_transformers(tiny_mlm, tmp_path):
    vocab = tmp_path / "src_vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"t{i}" for i in range(35)]
    vocab.write_text("\n".join(tokens) + "\n")
    tiny_mlm.save_pretrained(tmp_path / "ckpt", tokenizer_file=vocab)
    assert (tmp_path / "ckpt" / "src_vocab.txt").is_file()
    lengths = [20, 7]
    mask = (torch.arange(20)[None, :] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(5, 40, (2, 20)) * mask
    with torch.no_grad():
        ours, _ = tiny_mlm(ids, mask)
        hf = transformers.RoFormerForMaskedLM.from_pretrained(tmp_path / "ckpt").eval()
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        hidden = transformers.RoFormerModel.from_pretrained(tmp_path / "ckpt").eval()(
            input_ids=ids, attention_mask=mask).last_hidden_state
        encoder = RoFormerEncoder.from_pretrained(tmp_path / "ckpt").eval()
        again, _ = RoFormerForMlm.from_pretrained(tmp_path / "ckpt").eval()(ids, mask)
        ours_hidden = tiny_mlm.encoder(ids, mask)
    real = mask.bool()
    assert (ours - theirs)[real].abs().max().item() < 1e-4
    assert (hidden - ours_hidden)[real].abs().max().item() < 1e-4
    assert torch.allclose(encoder(ids, mask)[real], ours_hidden[real], atol=1e-5)
    assert torch.equal(again, ours)
    tied = hf.roformer.embeddings.word_embeddings.weight
    assert hf.cls.predictions.decoder.weight.data_ptr() == tied.data_ptr()


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = RoFormerForMlm(RoFormerEncoder(RoFormerConfig(**TINY | {"hidden_dropout_prob": 0.0})))
    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[2], rng.integers(5, 12, 23)]) for _ in range(64)]  # a peaked distribution

    def collate(batch, g):
        ids = torch.tensor(np.stack(batch))
        inputs, targets = mask_tokens(ids, special_ids=SPECIALS, mask_id=4, vocab_size=40, generator=g)
        return {"input_ids": inputs, "attention_mask": torch.ones_like(ids), "targets": targets}

    from training.config import TrainingConfig

    cfg = TrainingConfig(lr=3e-3, max_steps=40, warmup_steps=4)
    opt = build_optimizer(model, cfg)
    losses = [i.loss for i in train_steps(model, opt, build_scheduler(opt, cfg, 40),
                                          EpochBatches(seqs, collate=collate, batch_size=16), max_steps=40)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0  # from ~ln(40) = 3.7 towards ln(7) = 1.9


def test_resume_gives_identical_weights(corpus_dir, tmp_path, monkeypatch):
    straight = train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "straight"))
    assert straight.step == 6

    import training.mlm

    cfg = tiny_mlm_config(corpus_dir, tmp_path / "resumed")
    monkeypatch.setattr(training.mlm, "EpochBatches", InterruptedBatches)
    with pytest.raises(KeyboardInterrupt):
        train_mlm(cfg)
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match="--resume"):
        train_mlm(cfg)
    with pytest.raises(ConfigError, match=r"training\.lr"):
        train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "resumed", **{"training.lr": 1e-3}), resume=True)
    resumed = train_mlm(cfg, resume=True)
    assert resumed.step == 6

    from safetensors.torch import load_file

    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval" not in r] == [1, 2, 3, 4, 5, 6]  # no step logged twice
    assert (tmp_path / "resumed" / "config.resolved.toml").is_file()


def test_cli_mlm(corpus_dir, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f"""
[data]
root = "{corpus_dir}"
max_length = 32
[[data.sources]]
paths = ["*.txt"]
[vocab]
min_count = 1
[model.encoder]
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
[training]
max_steps = 2
batch_size = 4
eval_every = 0
progress = "off"
""", encoding="utf-8")
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "mlm", str(cfg), "--output.dir", str(out),
                              "--set", "training.lr=1e-3"])
    assert res.exit_code == 0, res.output
    assert "finished at step 2" in res.output
    assert (out / "model" / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert 'lr = 0.001' in (out / "config.resolved.toml").read_text()
    bad = runner.invoke(app, ["train", "mlm", str(cfg), "--training.learning_rate", "1"])
    assert bad.exit_code == 2 and "unknown key 'training.learning_rate'" in bad.output


def test_data_from_and_continue_position_conflict_is_refused_before_any_work(tmp_path):
    cfg = tiny_mlm_config(tmp_path / "corpus", tmp_path / "run",
                          **{"training.data_from": str(tmp_path / "other" / "checkpoints" / "step-00000003")})
    with pytest.raises(ConfigError, match=r"data\.continue_position = false"):
        train_mlm(cfg)
    assert not (tmp_path / "run").exists()
