"""Shared fixtures: a tiny character vocabulary written to disk once per test session."""

import pytest

TINY_CHARS = list("北京上海天安门广场大学清华人民银行中国公司张三李四在去了是的我你他和与有一个到这")
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory):
    """A vocab.txt with the BERT specials, a few dozen Chinese characters, digits and letters."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    tokens = SPECIALS + TINY_CHARS + list("0123456789abcdefghijklmnopqrstuvwxyz，。！？")
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path
