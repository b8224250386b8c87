"""Pre-training objectives beyond plain MLM: whole-word masking, ELECTRA replaced-token detection, and
the background batch builder (exact resume kept)."""

import json

import numpy as np
import pytest
import torch

from models.roformer import RoFormerConfig, RoFormerEncoder
from models.text import Tokenizer
from training.electra import GENERATOR_DIR, ElectraConfig, RoFormerForElectra, evaluate_electra
from training.batches import EpochBatches
from training.loop import build_optimizer, build_scheduler, train_steps
from models.mlm import IGNORE
from training.mlm import MaskingConfig, MlmCollator, WordSegmenter, mask_tokens, train_mlm
from training.prefetch import Prefetch

from .conftest import InterruptedBatches, tiny_mlm_config

SPECIALS = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK]
TINY = {"vocab_size": 60, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 64}
SMALL_GEN = ElectraConfig(generator_hidden=16, generator_heads=1, generator_intermediate=32)


@pytest.fixture(scope="module")
def char_tokenizer(tmp_path_factory):
    chars = "北京大学的张三去了上海。我们在医院工作天气很好"
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(chars)]) + "\n",
                     encoding="utf-8")
    return Tokenizer.from_vocab(vocab)


def test_whole_word_masking_masks_words_together():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (512, 96), generator=g)
    ids[:, 0] = 2
    word_ids = torch.arange(96).div(3, rounding_mode="floor").expand(512, 96).contiguous()  # words of 3 tokens
    inputs, targets = mask_tokens(ids, special_ids=SPECIALS, mask_id=4, vocab_size=1000, generator=g,
                                  word_ids=word_ids)
    chosen = (targets != IGNORE).view(512, 32, 3)[:, 1:]  # words after the one holding [CLS]
    assert torch.equal(chosen.all(-1), chosen.any(-1))  # a word is masked whole or not at all
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.01)  # still 15 % of the tokens
    assert (inputs[targets != IGNORE] == 4).float().mean().item() == pytest.approx(0.8, abs=0.02)


def test_word_segmenter_follows_jieba(char_tokenizer):
    pytest.importorskip("jieba")
    seg = WordSegmenter(char_tokenizer, [0, 1, 2, 3, 4])
    enc = char_tokenizer.encode("北京大学的张三去了上海。")  # [CLS] ... [SEP]
    words = seg(np.asarray(enc.ids))
    tokens = [char_tokenizer.id_to_token(i) for i in enc.ids]
    groups = {}
    for tok, w in zip(tokens, words.tolist()):
        groups.setdefault(w, []).append(tok)
    texts = ["".join(g) for _, g in sorted(groups.items())]
    assert texts[0] == "[CLS]" and texts[-1] == "[SEP]"
    assert "北京大学" in texts and "上海" in texts  # multi-character words share one index
    assert np.all(np.diff(words) >= 0) and words[0] == 0


def test_collator_whole_word(char_tokenizer):
    pytest.importorskip("jieba")
    collate = MlmCollator(char_tokenizer, MaskingConfig(whole_word=True, mask_prob=0.5))
    seq = np.asarray(char_tokenizer.encode("北京大学的张三去了上海。").ids)
    batch = collate([seq, seq[:6]], torch.Generator().manual_seed(1))
    assert batch["input_ids"].shape == (2, len(seq)) and batch["attention_mask"][1, 6:].sum() == 0
    chosen = batch["targets"][0] != IGNORE
    assert chosen[1:5].all() or not chosen[1:5].any()  # 北京大学 as one word


def tiny_electra(seed=0):
    torch.manual_seed(seed)
    return RoFormerForElectra.build(RoFormerEncoder(RoFormerConfig(**TINY)), SMALL_GEN)


def test_electra_labels_and_shared_embeddings():
    model = tiny_electra()
    assert model.generator.encoder.tok_emb is model.encoder.tok_emb
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (4, 20), generator=g)
    ids[:, 0] = 2
    inputs, targets = mask_tokens(ids, special_ids=SPECIALS, mask_id=4, vocab_size=60, generator=g,
                                  cfg=MaskingConfig(mask_prob=0.3, replace_mask=1.0, replace_random=0.0))
    parts, loss = model(inputs, torch.ones_like(ids), targets=targets)
    assert loss.item() == pytest.approx(parts["gen_loss"].item() + 50 * parts["disc_loss"].item(), rel=1e-5)
    labels = parts["labels"]
    assert not labels[targets == IGNORE].any()  # unmasked tokens are never "replaced"
    assert 0 < labels.sum() <= (targets != IGNORE).sum()  # a sample equal to the original is not replaced


def test_electra_learns(corpus_dir, tmp_path):
    pytest.importorskip("safetensors")
    cfg = tiny_mlm_config(corpus_dir, tmp_path / "e", **{
        "mlm.objective": "electra", "mlm.replace_mask": 1.0, "mlm.replace_random": 0.0,
        "electra.generator_hidden": 16, "electra.generator_heads": 1, "electra.generator_intermediate": 32,
        "training.max_steps": 30, "training.eval_every": 30, "training.checkpoint_every": 30,
        "training.threads": 1, "data.heldout_fraction": 0.1})
    result = train_mlm(cfg)
    ev = result.last_eval
    assert set(ev) >= {"gen_accuracy", "disc_accuracy", "replaced_recall", "disc_loss"}
    # the synthetic text has no context to learn from: the discriminator can only learn how often a
    # token is replaced, which already beats a coin flip (ln 2)
    assert 0 < ev["replaced_share"] < 0.3 and ev["disc_loss"] < 0.6
    log = [json.loads(x) for x in (tmp_path / "e" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r and "eval" not in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_electra_checkpoint_is_a_roformer_and_continues(tmp_path):
    transformers = pytest.importorskip("transformers")
    model = tiny_electra().eval()
    model.save_pretrained(tmp_path / "m")
    hf = transformers.RoFormerModel.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(5, 60, (2, 12))
    with torch.no_grad():
        ours = model.encoder(ids, torch.ones_like(ids))
        theirs = hf(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-4
    again = RoFormerForElectra.from_pretrained(tmp_path / "m", SMALL_GEN)  # a new stage: same weights
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "m" / GENERATOR_DIR / "config.json").is_file()


def test_evaluate_electra_is_deterministic():
    model = tiny_electra()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 60, (4, 20), generator=g)
    inputs, targets = mask_tokens(ids, special_ids=SPECIALS, mask_id=4, vocab_size=60, generator=g)
    batches = [{"input_ids": inputs, "attention_mask": torch.ones_like(ids), "targets": targets}]
    assert evaluate_electra(model, batches) == evaluate_electra(model, batches)


def test_prefetch_gives_the_same_batches_and_state():
    def collate(xs, g):
        return {"x": torch.tensor(xs), "r": torch.rand(1, generator=g)}

    examples = [[i] for i in range(50)]
    plain = EpochBatches(examples, collate=collate, batch_size=7, seed=3)
    ahead = Prefetch(EpochBatches(examples, collate=collate, batch_size=7, seed=3), depth=3)
    for _ in range(12):  # across an epoch boundary
        a, b = next(plain), next(ahead)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["r"], b["r"])
        assert ahead.epoch == plain.epoch
    state = ahead.state_dict()  # after the 12th batch handed out, not after the ones built ahead
    resumed = Prefetch(EpochBatches(examples, collate=collate, batch_size=7, seed=3))
    resumed.load_state_dict(state)
    for _ in range(5):
        a, b = next(plain), next(resumed)
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["r"], b["r"])
    with pytest.raises(RuntimeError):
        resumed.load_state_dict(state)


def test_prefetch_passes_errors_to_the_training_thread():
    def collate(xs, g):
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        next(Prefetch(EpochBatches([[1], [2], [3]], collate=collate, batch_size=2)))


def test_whole_word_electra_resume_is_exact(corpus_dir, tmp_path, monkeypatch):
    pytest.importorskip("jieba")
    over = {"mlm.objective": "electra", "mlm.whole_word": True, "training.threads": 1, "electra.generator_hidden": 16,
            "electra.generator_heads": 1, "electra.generator_intermediate": 32}
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "straight", **over))

    import training.mlm

    cfg = tiny_mlm_config(corpus_dir, tmp_path / "resumed", **over)
    monkeypatch.setattr(training.mlm, "EpochBatches", InterruptedBatches)
    with pytest.raises(KeyboardInterrupt):
        train_mlm(cfg)
    monkeypatch.undo()
    train_mlm(cfg, resume=True)
    from safetensors.torch import load_file

    for name in ("model.safetensors", f"{GENERATOR_DIR}/model.safetensors"):
        a = load_file(tmp_path / "straight" / "model" / name)
        b = load_file(tmp_path / "resumed" / "model" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_few_electra_steps_reduce_the_loss():
    model = tiny_electra()
    rng = np.random.default_rng(0)
    seqs = [np.concatenate([[2], 5 + rng.integers(0, 8, 20) * 2 % 55, [3]]) for _ in range(64)]

    class Tok:
        pad_id, unk_id, cls_id, sep_id, mask_id, vocab_size = 0, 1, 2, 3, 4, 60

    collate = MlmCollator(Tok(), MaskingConfig(replace_mask=1.0, replace_random=0.0))
    from training.config import TrainingConfig

    cfg = TrainingConfig(lr=3e-3, warmup_steps=2, max_steps=30)
    opt = build_optimizer(model, cfg)
    losses = [i.loss for i in train_steps(model, opt, build_scheduler(opt, cfg, 30),
                                          EpochBatches(seqs, collate=collate, batch_size=16), max_steps=30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_cached_sequences_give_the_same_run(corpus_dir, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    over = {"data.cache_dir": str(tmp_path / "cache"), "training.threads": 1}
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "a", **over))  # builds the vocabulary, packs, fills the cache
    assert len(list((tmp_path / "cache").glob("packed-*.npz"))) == 1
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes((tmp_path / "a" / "vocab.txt").read_bytes())
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "b", **over, **{"vocab.path": str(vocab)}))
    assert (tmp_path / "a" / "data_report.json").exists()
    assert not (tmp_path / "b" / "data_report.json").exists()  # from the cache: not a text was read
    runs = {n: json.loads((tmp_path / n / "metrics.json").read_text()) for n in "ab"}
    assert runs["a"]["data"] == runs["b"]["data"] and runs["a"]["vocab"] == runs["b"]["vocab"]
    a = load_file(tmp_path / "a" / "model" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_continues_the_data_where_the_released_one_stopped(corpus_dir, tmp_path):
    """Stage 2 from a released stage 1 draws the batches a straight run would draw next, not the first ones
    again; a stage in another data order (here another seed) starts at the beginning."""
    from training.release import release_encoder

    over = {"training.threads": 1, "data.prefetch": 2}
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "s1", **{**over, "training.max_steps": 5}))
    first = json.loads((tmp_path / "s1" / "metrics.json").read_text())
    vocab = str(tmp_path / "s1" / "vocab.txt")
    per_epoch = first["data"]["steps_per_epoch"]
    assert first["data"]["started_at"] is None
    assert (first["data_position"]["epoch"] * per_epoch + first["data_position"]["index"]) == 5
    rel = tmp_path / "rel"
    release_encoder(tmp_path / "s1" / "model", rel, name="stage 1")
    assert json.loads((rel / "encoder.json").read_text())["data_position"] == first["data_position"]

    stage2 = {**over, "model.init": str(rel), "vocab.path": vocab, "training.max_steps": 4}
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "s2", **stage2))
    second = json.loads((tmp_path / "s2" / "metrics.json").read_text())
    assert second["data"]["started_at"] == {k: first["data_position"][k] for k in ("epoch", "index")}
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "straight", **{**over, "vocab.path": vocab,
                                                                     "training.max_steps": 9}))
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert second["data_position"] == straight["data_position"]  # 5 + 4 batches: where 9 straight ones end

    # the same stage interrupted after its step-3 checkpoint and resumed: the record still says where it
    # started, and it ends where the straight run does
    import training.mlm

    cfg = tiny_mlm_config(corpus_dir, tmp_path / "s2_resumed", **stage2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(training.mlm, "EpochBatches", InterruptedBatches)
        with pytest.raises(KeyboardInterrupt):
            train_mlm(cfg)
    train_mlm(cfg, resume=True)
    resumed = json.loads((tmp_path / "s2_resumed" / "metrics.json").read_text())
    assert resumed["data"]["started_at"] == second["data"]["started_at"]
    assert resumed["data_position"] == straight["data_position"]

    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "other", **{**stage2, "training.seed": 7}))
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["data"]["started_at"] is None
    train_mlm(tiny_mlm_config(corpus_dir, tmp_path / "again", **{**stage2, "data.continue_position": False}))
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["data"]["started_at"] is None and again["data_position"]["index"] == 4  # asked to start over


def test_continued_batches_are_the_ones_a_straight_run_draws_next(tmp_path):
    from training.config import TrainingConfig
    from training.mlm import continue_data, data_position

    examples = [np.full(3, i) for i in range(40)]
    collate = lambda xs, g: {"ids": torch.tensor(np.stack(xs))}  # noqa: E731
    make = lambda: EpochBatches(examples, collate=collate, batch_size=4, seed=3)  # noqa: E731
    training = TrainingConfig(seed=3, batch_size=4)
    straight = make()
    drawn = [next(straight)["ids"] for _ in range(13)]  # past the end of the first epoch (10 batches)
    stopped = make()
    for _ in range(7):
        next(stopped)
    (tmp_path / "enc").mkdir()
    pos = data_position(stopped, fingerprint="f", training=training, sequences=40)
    (tmp_path / "enc" / "encoder.json").write_text(json.dumps({"data_position": pos}))
    fresh = make()
    enc = str(tmp_path / "enc")
    assert continue_data(fresh, enc, fingerprint="f", training=training, sequences=40) == pos
    assert all(torch.equal(next(fresh)["ids"], want) for want in drawn[7:])
    other = make()  # the data changed: from the beginning
    assert continue_data(other, enc, fingerprint="g", training=training, sequences=40) is None
    assert torch.equal(next(other)["ids"], drawn[0])
