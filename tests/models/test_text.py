"""Tokenizer offsets, sliding windows, padding and char-span mapping (models/text.py)."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from models.text import (
    Encoding,
    Tokenizer,
    _clean_offsets,
    char_span_to_token_span,
    char_spans_to_token_spans,
    pad_batch,
)

REPO = Path(__file__).resolve().parents[2]
HANGUL = unicodedata.normalize("NFD", "한")  # 3 jamo: a one-character word that WordPiece splits
VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("我爱北京天安门上海的人")
    + ["hello", "world", "##s", "un", "##aff", "##able"]
    + list("0123456789")
    + [f"##{d}" for d in "0123456789"]
    + ["，", "。", "！", ",", ".", "!", "😀"]
    + [HANGUL[0], "##" + HANGUL[1], "##" + HANGUL[2]]
)


def write_vocab(path: Path, tokens: list[str]) -> Path:
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


@pytest.fixture
def tok(tmp_path: Path) -> Tokenizer:
    return Tokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", VOCAB))


def pieces(tok: Tokenizer, enc: Encoding) -> list[tuple[str, str]]:
    """(token, text[start:end]) for every content token."""
    return [
        (tok.id_to_token(int(i)), enc.text[s:e]) for i, (s, e) in zip(enc.ids, enc.offsets) if s >= 0
    ]


# --------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------


def test_special_ids_and_vocab(tok: Tokenizer) -> None:
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == len(VOCAB)
    assert tok.token_to_id("北") == 7 and tok.id_to_token(7) == "北"
    assert tok.token_to_id("猫") is None


def test_missing_specials_named(tmp_path: Path) -> None:
    vocab = write_vocab(tmp_path / "vocab.txt", ["[PAD]", "[UNK]", "[CLS]", "我"])
    with pytest.raises(ValueError, match=r"\[SEP\]"):
        Tokenizer.from_vocab(vocab)


def test_mask_id_optional(tmp_path: Path) -> None:
    tok = Tokenizer.from_vocab(write_vocab(tmp_path / "vocab.txt", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "我"]))
    assert tok.mask_id is None


def test_save_load_round_trip(tok: Tokenizer, tmp_path: Path) -> None:
    text = "我爱北京，Hello  worlds！2024 😀 猫"
    saved = tok.save(tmp_path / "bundle")
    assert saved == tmp_path / "bundle" / "tokenizer.json" and saved.is_file()
    for again in (Tokenizer.load(tmp_path / "bundle"), Tokenizer.load(saved), Tokenizer.load(tmp_path)):
        a, b = tok.encode(text), again.encode(text)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.offsets, b.offsets)
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "nowhere")


def test_lowercase_flag(tmp_path: Path) -> None:
    vocab = write_vocab(tmp_path / "vocab.txt", VOCAB)
    assert Tokenizer.from_vocab(vocab).encode("Hello").ids.tolist() == [2, 16, 3]
    assert Tokenizer.from_vocab(vocab, lowercase=False).encode("Hello").ids.tolist() == [2, 1, 3]


# --------------------------------------------------------------------------------------------
# Offsets
# --------------------------------------------------------------------------------------------

MIXED = "我爱北京，Hello  worlds！2024年 unaffable\t😀。zzz猫\x00上海"


def test_offsets_mixed_text_exact(tok: Tokenizer) -> None:
    enc = tok.encode(MIXED)
    assert enc.ids.dtype == np.int64 and enc.offsets.dtype == np.int64 and enc.offsets.shape == (len(enc.ids), 2)
    assert enc.offsets[0].tolist() == [-1, -1] and enc.offsets[-1].tolist() == [-1, -1]
    assert enc.type_ids.tolist() == [0] * len(enc.ids)
    assert pieces(tok, enc) == [
        ("我", "我"), ("爱", "爱"), ("北", "北"), ("京", "京"), ("，", "，"),
        ("hello", "Hello"), ("world", "world"), ("##s", "s"), ("！", "！"),
        ("2", "2"), ("##0", "0"), ("##2", "2"), ("##4", "4"), ("[UNK]", "年"),
        ("un", "un"), ("##aff", "aff"), ("##able", "able"),
        ("😀", "😀"), ("。", "。"), ("[UNK]", "zzz"), ("[UNK]", "猫"), ("上", "上"), ("海", "海"),
    ]  # fmt: skip
    content = enc.offsets[enc.offsets[:, 0] >= 0]
    assert content[:, 0].tolist()[:8] == [0, 1, 2, 3, 4, 5, 12, 17]  # the double space is skipped


def test_offsets_invariants(tok: Tokenizer) -> None:
    texts = [MIXED, "  我  ", "😀 我😀", "HELLO😀world", "a\u0301b 北", "\u200b我\u3000京", HANGUL + "国"]
    for text in texts:
        enc = tok.encode(text)
        content = enc.offsets[enc.offsets[:, 0] >= 0]
        assert np.all(content[:, 0] <= content[:, 1])
        assert np.all(content[1:, 0] >= content[:-1, 1]), f"tokens overlap in {text!r}"
        for (tid, sub), (s, e) in zip(pieces(tok, enc), content):
            if tid != "[UNK]" and e > s:
                assert unicodedata.normalize("NFC", sub.lower()) == unicodedata.normalize("NFC", tid.removeprefix("##"))
        covered = np.zeros(len(text), dtype=bool)
        for s, e in content:
            covered[s:e] = True
        for k, ch in enumerate(text):
            if not ch.isspace() and unicodedata.category(ch) not in ("Cc", "Cf"):
                assert covered[k], f"{ch!r} at {k} of {text!r} in no token"


def test_emoji_offsets_are_code_points(tok: Tokenizer) -> None:
    enc = tok.encode("😀 我😀")
    assert pieces(tok, enc) == [("😀", "😀"), ("我", "我"), ("😀", "😀")]
    assert enc.offsets[1:-1].tolist() == [[0, 1], [2, 3], [3, 4]]  # UTF-16 would say [0, 2], [3, 4], [4, 6]


def test_split_character_gets_disjoint_offsets(tok: Tokenizer) -> None:
    # NFD turns the Hangul syllable into 3 jamo, each its own token: the character stays on the first.
    enc = tok.encode("한 北")
    tokens = [tok.id_to_token(int(i)) for i in enc.ids]
    assert tokens == ["[CLS]", HANGUL[0], "##" + HANGUL[1], "##" + HANGUL[2], "北", "[SEP]"]
    assert enc.offsets.tolist() == [[-1, -1], [0, 1], [1, 1], [1, 1], [2, 3], [-1, -1]]
    assert char_span_to_token_span(enc.offsets, 0, 1) == (1, 3)
    assert char_span_to_token_span(enc.offsets, 0, 3) == (1, 4)
    assert char_span_to_token_span(enc.offsets, 1, 1) is None


def test_empty_and_whitespace(tok: Tokenizer) -> None:
    for text in ["", "   ", "\x00\t"]:
        enc = tok.encode(text)
        assert enc.ids.tolist() == [2, 3] and enc.offsets.tolist() == [[-1, -1], [-1, -1]]
        assert len(tok.encode(text, add_special_tokens=False)) == 0


def test_bad_input(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="Unicode"):
        tok.encode("我\ud800")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["我", 3])  # type: ignore[list-item]


def test_encode_batch_equals_encode(tok: Tokenizer) -> None:
    texts = [MIXED, "", "hello 北京", "😀"]
    for single, batched in zip((tok.encode(t) for t in texts), tok.encode_batch(texts)):
        assert single.text == batched.text
        np.testing.assert_array_equal(single.ids, batched.ids)
        np.testing.assert_array_equal(single.offsets, batched.offsets)


def test_offsets_cleaned_only_where_needed(tok: Tokenizer) -> None:
    """A batch mixing texts whose characters WordPiece splits (Hangul) with ordinary ones gets the
    offsets that cleaning every text would give: the clean-up is skipped only where it changes nothing."""
    texts = ["한 北", MIXED, "", "北京 한한", "hello", "😀한", "  我  "]
    raw = tok._tok.encode_batch(texts)
    for text, enc, r in zip(texts, tok.encode_batch(texts), raw, strict=True):
        special = np.array(r.special_tokens_mask, dtype=bool)
        seq_ids = np.where(special, -1, 0)
        want = _clean_offsets(np.array(r.offsets, dtype=np.int64).reshape(-1, 2), special, seq_ids)
        np.testing.assert_array_equal(enc.offsets, want, err_msg=text)
        np.testing.assert_array_equal(enc.ids, r.ids)
        np.testing.assert_array_equal(enc.type_ids, r.type_ids)
    assert tok.encode_batch([]) == []


def test_encode_ids_equals_encode_batch(tok: Tokenizer) -> None:
    texts = [MIXED, "", "hello 北京", "😀", "한 北", "[SEP]"]
    ids = tok.encode_ids(texts)
    assert [i.tolist() for i in ids] == [e.ids.tolist() for e in tok.encode_batch(texts)]
    assert all(i.dtype == np.int64 and not i.flags.writeable for i in ids)
    with pytest.raises(ValueError, match="Unicode"):
        tok.encode_ids(["我\ud800"])


def test_encode_pair(tok: Tokenizer) -> None:
    enc = tok.encode_pair("北京", "hello 上海")
    tokens = [tok.id_to_token(int(i)) for i in enc.ids]
    assert tokens == ["[CLS]", "北", "京", "[SEP]", "hello", "上", "海", "[SEP]"]
    assert enc.type_ids.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert enc.offsets.tolist() == [[-1, -1], [0, 1], [1, 2], [-1, -1], [0, 5], [6, 7], [7, 8], [-1, -1]]
    assert (enc.text, enc.text_pair) == ("北京", "hello 上海")


def test_encoding_is_read_only(tok: Tokenizer) -> None:
    enc = tok.encode("北京")
    with pytest.raises(ValueError):
        enc.ids[0] = 5


# --------------------------------------------------------------------------------------------
# Windows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_length", "stride", "starts"),
    [(6, 3, [0, 3, 5]), (6, 4, [0, 4, 5]), (6, 1, [0, 1, 2, 3, 4, 5]), (11, 4, [0]), (12, 1, [0])],
)
def test_window_starts(tok: Tokenizer, max_length: int, stride: int, starts: list[int]) -> None:
    windows = tok.encode_windows("我爱北京天安门上海", max_length=max_length, stride=stride)  # 9 tokens
    assert [w.token_start for w in windows] == starts
    assert all(len(w) == min(max_length, 11) for w in windows)


def test_windows_cover_and_match_whole(tok: Tokenizer) -> None:
    text = "我爱北京天安门，hello worlds！ 2024 😀 " * 4
    whole = tok.encode(text, add_special_tokens=False)
    n = len(whole)
    windows = tok.encode_windows(text, max_length=10, stride=5)
    seen = np.zeros(n, dtype=bool)
    prev = (-1, -1)
    for w in windows:
        k = len(w) - 2
        assert len(w) <= 10 and w.ids[0] == tok.cls_id and w.ids[-1] == tok.sep_id
        assert w.offsets[0].tolist() == [-1, -1] and w.offsets[-1].tolist() == [-1, -1]
        np.testing.assert_array_equal(w.ids[1:-1], whole.ids[w.token_start : w.token_start + k])
        np.testing.assert_array_equal(w.offsets[1:-1], whole.offsets[w.token_start : w.token_start + k])
        assert w.token_start > prev[0] and w.token_start + k > prev[1]  # never inside the previous one
        prev = (w.token_start, w.token_start + k)
        seen[w.token_start : w.token_start + k] = True
    assert seen.all() and prev[1] == n
    assert [w.token_start for w in windows[:-1]] == list(range(0, 5 * (len(windows) - 1), 5))


def test_windows_from_an_encoding_equal_encode_windows(tok: Tokenizer) -> None:
    """Windows cut from an encoding the caller already has (with or without its [CLS]/[SEP]) are
    those of ``encode_windows``: one windowing implementation, the text tokenized once."""
    texts = [MIXED * 3, "한 北" * 9, "我爱北京天安门上海", "  ", "北"]
    for text, enc in zip(texts, tok.encode_batch(texts)):
        bare = tok.encode(text, add_special_tokens=False)
        for max_length, stride in [(6, 3), (10, 4), (12, 10), (64, 16)]:
            want = tok.encode_windows(text, max_length=max_length, stride=stride)
            for source in (enc, bare):
                got = tok.windows(source, max_length=max_length, stride=stride)
                assert [w.token_start for w in got] == [w.token_start for w in want]
                for g, w in zip(got, want, strict=True):
                    np.testing.assert_array_equal(g.ids, w.ids)
                    np.testing.assert_array_equal(g.offsets, w.offsets)
    with pytest.raises(ValueError, match="pair"):
        tok.windows(tok.encode_pair("北京", "上海"), max_length=8, stride=4)


def test_window_that_fits_equals_encode(tok: Tokenizer) -> None:
    (w,) = tok.encode_windows(MIXED, max_length=64, stride=16)
    enc = tok.encode(MIXED)
    assert w.token_start == 0
    np.testing.assert_array_equal(w.ids, enc.ids)
    np.testing.assert_array_equal(w.offsets, enc.offsets)


def test_window_of_empty_text(tok: Tokenizer) -> None:
    (w,) = tok.encode_windows("  ", max_length=8, stride=4)
    assert w.ids.tolist() == [2, 3] and w.offsets.tolist() == [[-1, -1], [-1, -1]] and w.token_start == 0


def test_window_arguments_checked(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_windows("北京", max_length=2, stride=1)
    for stride in (0, -1, 7):
        with pytest.raises(ValueError, match="stride"):
            tok.encode_windows("北京", max_length=8, stride=stride)


# --------------------------------------------------------------------------------------------
# Padding and span mapping
# --------------------------------------------------------------------------------------------


def test_pad_batch() -> None:
    seqs = [np.array([5, 6, 7]), np.array([8]), np.array([], dtype=np.int64)]
    ids, mask = pad_batch(seqs, pad_id=0)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    ids, mask = pad_batch(seqs, pad_id=9, multiple_of=4)
    assert ids.shape == mask.shape == (3, 4)
    assert ids.tolist() == [[5, 6, 7, 9], [8, 9, 9, 9], [9, 9, 9, 9]]
    assert mask.sum(axis=1).tolist() == [3, 1, 0]
    assert pad_batch([np.arange(8)], pad_id=0, multiple_of=8)[0].shape == (1, 8)
    with pytest.raises(ValueError):
        pad_batch([], pad_id=0)


def test_char_span_to_token_span(tok: Tokenizer) -> None:
    enc = tok.encode("hello worlds 我爱")  # [CLS] hello world ##s 我 爱 [SEP]
    assert enc.offsets.tolist() == [[-1, -1], [0, 5], [6, 11], [11, 12], [13, 14], [14, 15], [-1, -1]]
    off = enc.offsets
    assert char_span_to_token_span(off, 0, 5) == (1, 1)
    assert char_span_to_token_span(off, 0, 12) == (1, 3)
    assert char_span_to_token_span(off, 6, 11) == (2, 2)
    assert char_span_to_token_span(off, 6, 12) == (2, 3)
    assert char_span_to_token_span(off, 13, 15) == (4, 5)
    assert char_span_to_token_span(off, 7, 12) is None  # starts inside "world"
    assert char_span_to_token_span(off, 6, 10) is None  # ends inside "world"
    assert char_span_to_token_span(off, 5, 11) is None  # starts on the space
    assert char_span_to_token_span(off, 0, 13) is None  # ends on the space
    assert char_span_to_token_span(off, 3, 3) is None
    assert char_span_to_token_span(off, 14, 13) is None
    assert char_span_to_token_span(off, 14, 99) is None
    spans = np.array([[0, 5], [7, 12], [13, 15], [-1, -1]])
    assert char_spans_to_token_spans(off, spans).tolist() == [[1, 1], [-1, -1], [4, 5], [-1, -1]]


def test_char_span_round_trip(tok: Tokenizer) -> None:
    enc = tok.encode(MIXED)
    real = np.flatnonzero(enc.offsets[:, 0] >= 0)
    pairs = [(i, j) for i in real for j in real if i <= j]
    spans = np.array([[enc.offsets[i, 0], enc.offsets[j, 1]] for i, j in pairs])
    assert char_spans_to_token_spans(enc.offsets, spans).tolist() == [list(p) for p in pairs]


def test_torch_free() -> None:
    code = "import models.text, models.spans, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
