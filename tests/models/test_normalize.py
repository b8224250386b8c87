"""Offset-preserving normalisation (models.normalize) and the tokenizer that applies it."""

from __future__ import annotations

import pytest

from models.bundle import Manifest
from models.normalize import WIDTH_TABLE, Normalize, Normalizer, t2s_table
from models.text import Tokenizer

BOTH = Normalizer(Normalize(width=True, t2s=True))


@pytest.mark.parametrize("text, want", [
    ("張三在北京大學讀書", "张三在北京大学读书"),
    ("頭髮 發展 後來", "头发 发展 后来"),
    ("ＡＢＣ１２３ｘｙｚ", "ABC123xyz"),
    ("你好，世界！（全角标点不变）", "你好，世界！（全角标点不变）"),  # CJK punctuation is left alone
    ("乾隆皇帝很乾燥", "乾隆皇帝很干燥"),  # OpenCC's phrase keeps 乾 in 乾隆; alone it converts
    ("😀 emoji 和 ｅｍｏｊｉ", "😀 emoji 和 emoji"),
    ("", ""),
])
def test_one_character_for_one(text: str, want: str) -> None:
    got = BOTH(text)
    assert got == want and len(got) == len(text)


def test_each_output_character_is_the_original_or_its_own_conversion() -> None:
    table = {**t2s_table(), **WIDTH_TABLE}
    text = "乾隆年間，乾燥的臺灣島上，著名的後人在讀書。ＡＢ１２"
    for a, b in zip(text, BOTH(text)):
        assert b == a or b == table[ord(a)]


def test_simplified_text_is_left_as_it_is() -> None:
    text = "著名的显著成果：张三在北京大学读书，发展很快。"
    assert Normalizer(Normalize(t2s=True))(text) == text


def test_flags_parse_and_describe() -> None:
    assert Normalize.parse("width,t2s") == Normalize(width=True, t2s=True) == Normalize.parse("all")
    assert Normalize.parse("none") == Normalize() and Normalize().describe() == "none"
    assert Normalize.parse("t2s").describe() == "t2s" and not Normalize().enabled
    with pytest.raises(ValueError, match="width, t2s"):
        Normalize.parse("s2t")


def test_manifest_records_it_and_old_manifests_mean_none() -> None:
    from models.bundle import GraphSpec, NerTask

    g = GraphSpec(file="ner.fp32.onnx", precision="fp32", opset=18, inputs=["input_ids"], outputs=["scores"])
    ner = NerTask(graphs={"fp32": g}, max_length=16, labels=["A"], head="gp", stride=8)
    old = Manifest(format_version=2, name="x", tasks={"ner": ner})
    assert old.normalize == Normalize()
    new = Manifest.model_validate({**old.model_dump(), "normalize": {"width": True, "t2s": True}})
    assert new.normalize.width and new.normalize.t2s
    assert Manifest.model_validate_json(new.model_dump_json()) == new


def test_tokenizer_offsets_point_into_the_original(tmp_path) -> None:
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"张三在北京大学读书", "abc"]) + "\n", encoding="utf-8")
    plain = Tokenizer.from_vocab(vocab)
    tok = plain.normalizing(BOTH)
    text = "張三在北京大學讀書ａｂｃ"
    enc = tok.encode(text)
    assert enc.text == text and tok.encode("张三在北京大学读书abc").ids.tolist() == enc.ids.tolist()
    assert tok.unk_id not in enc.ids.tolist()
    assert plain.unk_id in plain.encode(text).ids.tolist()
    content = enc.offsets[1:-1]
    assert [text[s:e] for s, e in content] == ["張", "三", "在", "北", "京", "大", "學", "讀", "書", "ａｂｃ"]
    (batch,) = tok.encode_batch([text])
    assert batch.ids.tolist() == enc.ids.tolist() and batch.offsets.tolist() == enc.offsets.tolist()
    assert tok.encode_ids([text])[0].tolist() == enc.ids.tolist()
    with pytest.raises(ValueError, match="changed the length"):
        plain.normalizing(lambda s: s + "!").encode("x")
