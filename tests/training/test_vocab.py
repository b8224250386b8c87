"""Character vocabulary: specials first, frequency order, min count, size cap, Latin pieces."""

from collections import Counter

import pytest
from typer.testing import CliRunner

from models.text import Tokenizer
from ropenlp.cli import app
from training.vocab import ALWAYS, SPECIALS, build_vocab_file, count_pieces, select_vocab, unk_rate


def test_pieces_follow_the_tokenizer():
    counts = count_pieces(["你好，World 2024！", "ÉCOLE 你"])
    assert counts["你"] == 2 and counts["，"] == 1 and counts["！"] == 1
    assert counts["w"] == 1 and counts["##o"] == 2 and counts["##d"] == 1  # lowercased, ## after the first
    assert counts["2"] == 1 and counts["##0"] == 1 and counts["##4"] == 1
    assert counts["e"] == 1 and counts["##c"] == 1  # accents stripped as the normaliser does


def test_specials_first_then_frequency_min_count_and_cap():
    counts = Counter({"的": 50, "是": 30, "一": 30, "罕": 2, "a": 1})
    vocab = select_vocab(counts, min_count=3)
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] == list(SPECIALS)
    assert vocab[5:8] == ["的", "一", "是"]  # by count, ties in code-point order
    assert "罕" not in vocab and set(ALWAYS) <= set(vocab)
    assert len(vocab) == len(set(vocab)) == 5 + 3 + len(ALWAYS)
    capped = select_vocab(counts, min_count=1, max_size=len(SPECIALS) + len(ALWAYS) + 2)
    assert len(capped) == len(SPECIALS) + len(ALWAYS) + 2 and "的" in capped and "罕" not in capped
    with pytest.raises(ValueError, match="no room"):
        select_vocab(counts, max_size=10)


def test_built_vocab_loads_and_covers_latin(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("我们喜欢自然语言处理\n我们的模型\n" * 3 + "罕见\n", encoding="utf-8")
    held = tmp_path / "held.txt"
    held.write_text("我们喜欢 Transformer 模型，GPT4 也是。\n", encoding="utf-8")
    path, rate = build_vocab_file([str(train)], tmp_path / "vocab.txt", min_count=2, max_size=None,
                                  heldout=[str(held)])
    tok = Tokenizer.from_vocab(path)
    assert [tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id] == [0, 1, 2, 3, 4]
    assert tok.token_to_id("罕") is None  # seen once < min_count
    enc = tok.encode("Transformer 2024", add_special_tokens=False)
    assert [tok.id_to_token(i) for i in enc.ids] == ["t", *[f"##{c}" for c in "ransformer"], "2", "##0", "##2", "##4"]
    # held-out: "，" and "。" and "也是" never seen in training -> [UNK]; Latin words are covered
    held_tokens = tok.encode(held.read_text(encoding="utf-8").strip(), add_special_tokens=False)
    assert rate.unk_tokens == 4 and rate.tokens == len(held_tokens)
    assert dict(rate.top_unknown) == {"，": 1, "也": 1, "是": 1, "。": 1}
    assert unk_rate(tok, ["我们"]).token_rate == 0.0


def test_cli_vocab(tmp_path):
    (tmp_path / "a.txt").write_text("你好世界\n你好\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("世界和平\n", encoding="utf-8")
    out = tmp_path / "v" / "vocab.txt"
    res = CliRunner().invoke(app, ["train", "vocab", "--input", str(tmp_path / "*.txt"), "--out", str(out),
                                   "--min-count", "2", "--heldout", str(tmp_path / "b.txt")])
    assert res.exit_code == 0, res.output
    tokens = out.read_text(encoding="utf-8").splitlines()
    assert tokens[:5] == list(SPECIALS) and tokens[5:9] == ["世", "你", "好", "界"] and "和" not in tokens
    bad = CliRunner().invoke(app, ["train", "vocab", "-i", str(tmp_path / "none*.txt"), "--out", str(out)])
    assert bad.exit_code == 2 and "no file matches" in bad.output
