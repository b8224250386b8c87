"""Character-level ``vocab.txt`` for the BERT WordPiece tokenizer of :mod:`models.text` (torch-free).

The tokenizer normalises (lowercase, accents stripped, CJK characters split off as words),
splits on whitespace and punctuation, then WordPiece-matches each word against the vocabulary; a
word with any piece missing becomes a single ``[UNK]``. For a character model the pieces are:

* every CJK character and punctuation mark as itself (they are always one-character words);
* the first character of a longer word (Latin, digits, kana, ...) as itself, and each later
  character as ``##c`` — so "covid19" is ``c ##o ##v ##i ##d ##1 ##9``, never ``[UNK]``.

Counting runs the same normaliser and pre-tokenizer as the tokenizer, so what is counted is what
will be looked up. The file is: the specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0-4), then
pieces by falling frequency (ties in code-point order); pieces below ``min_count`` are left out,
``max_size`` caps the whole file; ``a-z``, ``0-9`` and their ``##`` forms are always in.
"""

from __future__ import annotations

import logging
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers

from models.text import CLS, MASK, PAD, SEP, UNK, Tokenizer
from training.data import ReadReport, expand_paths, read_lines

log = logging.getLogger(__name__)

SPECIALS = (PAD, UNK, CLS, SEP, MASK)
ALNUM = string.ascii_lowercase + string.digits
ALWAYS = tuple(ALNUM) + tuple("##" + c for c in ALNUM)  # English words and numbers are never [UNK]


def word_pieces(texts: Iterable[str], *, lowercase: bool = True) -> Iterable[list[str]]:
    """Per text, its character pieces as the tokenizer will look them up (see the module doc)."""
    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                      lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    for text in texts:
        pieces = []
        for word, _ in pre.pre_tokenize_str(norm.normalize_str(text)):
            pieces.append(word[0])
            pieces.extend("##" + c for c in word[1:])
        yield pieces


def count_pieces(texts: Iterable[str], *, lowercase: bool = True) -> Counter:
    counts: Counter = Counter()
    for pieces in word_pieces(texts, lowercase=lowercase):
        counts.update(pieces)
    return counts


def select_vocab(counts: Counter, *, min_count: int = 1, max_size: int | None = None,
                 always: Sequence[str] = ALWAYS) -> list[str]:
    """Specials, then pieces with ``count >= min_count`` by falling frequency, at most ``max_size`` in all."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    floor = len(SPECIALS) + len(always)
    if max_size is not None and max_size < floor:
        raise ValueError(f"max_size {max_size} leaves no room: the specials and a-z/0-9 pieces need {floor}")
    by_freq = sorted(counts, key=lambda t: (-counts[t], t))
    chosen = dict.fromkeys(t for t in always if t not in SPECIALS)
    for t in by_freq:
        if max_size is not None and len(SPECIALS) + len(chosen) >= max_size:
            break
        if counts[t] < min_count:
            break
        if t not in SPECIALS:
            chosen.setdefault(t)
    return list(SPECIALS) + sorted(chosen, key=lambda t: (-counts.get(t, 0), t))


def write_vocab(tokens: Sequence[str], path: str | Path) -> Path:
    bad = [t for t in tokens if not t or any(c in t for c in "\r\n")]
    if bad:
        raise ValueError(f"vocabulary tokens must be non-empty single-line strings: {bad[:5]!r}")
    if len(set(tokens)) != len(tokens):
        raise ValueError("vocabulary has duplicate tokens")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    return path


@dataclass(frozen=True)
class UnkRate:
    tokens: int  # content tokens (specials excluded)
    unk_tokens: int
    chars: int  # characters of the texts covered by tokens
    unk_chars: int  # characters that ended up inside an [UNK]
    top_unknown: tuple[tuple[str, int], ...]  # the most frequent strings mapped to [UNK]

    @property
    def token_rate(self) -> float:
        return self.unk_tokens / max(self.tokens, 1)

    @property
    def char_rate(self) -> float:
        return self.unk_chars / max(self.chars, 1)

    def __str__(self) -> str:
        top = ", ".join(f"{s!r}×{n}" for s, n in self.top_unknown[:8])
        return (f"[UNK] {self.token_rate:.3%} of {self.tokens:,} tokens, {self.char_rate:.3%} of characters"
                + (f" (most frequent: {top})" if top else ""))


def unk_rate(tokenizer: Tokenizer, texts: Sequence[str], *, batch: int = 4096) -> UnkRate:
    """How much of ``texts`` the tokenizer maps to ``[UNK]``."""
    tokens = unk = chars = unk_chars = 0
    unknown: Counter = Counter()
    for i in range(0, len(texts), batch):
        for enc in tokenizer.encode_batch(texts[i: i + batch], add_special_tokens=False):
            spans = enc.offsets[:, 1] - enc.offsets[:, 0]
            is_unk = enc.ids == tokenizer.unk_id
            tokens += len(enc.ids)
            unk += int(is_unk.sum())
            chars += int(spans.sum())
            unk_chars += int(spans[is_unk].sum())
            unknown.update(enc.text[s:e] for s, e in enc.offsets[is_unk])
    return UnkRate(tokens, unk, chars, unk_chars, tuple(unknown.most_common(20)))


def build_vocab_file(inputs: Sequence[str], out: str | Path, *, min_count: int = 5,
                     max_size: int | None = 8000, heldout: Sequence[str] = (), lowercase: bool = True,
                     on_error: str = "raise", root: str | Path | None = None) -> tuple[Path, UnkRate | None]:
    """Build ``out`` from plain-text files (globs); measure ``[UNK]`` on ``heldout`` files if given.

    Behind ``ropenlp train vocab``. Returns the path and the held-out ``[UNK]`` rate.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = ReadReport()
    texts = (r.text for p in expand_paths(inputs, root=root) for r in read_lines(p, report))
    counts = count_pieces(texts, lowercase=lowercase)
    report.check(on_error)  # type: ignore[arg-type]
    log.info("read %s", report.summary())
    tokens = select_vocab(counts, min_count=min_count, max_size=max_size)
    path = write_vocab(tokens, out)
    kept = sum(counts[t] for t in tokens)
    log.info("wrote %s: %d tokens (%d distinct pieces seen; the kept ones cover %.4f%% of %d pieces)",
             path, len(tokens), len(counts), 100 * kept / max(sum(counts.values()), 1), sum(counts.values()))
    rate = None
    if heldout:
        held_report = ReadReport()
        held = [r.text for p in expand_paths(heldout, root=root) for r in read_lines(p, held_report)]
        held_report.check(on_error)  # type: ignore[arg-type]
        rate = unk_rate(Tokenizer.from_vocab(path, lowercase=lowercase), held)
        log.info("held-out %s", rate)
    return path, rate
