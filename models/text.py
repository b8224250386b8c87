"""Tokenization with character offsets and sliding windows (torch-free: stdlib, numpy, tokenizers).

Read top to bottom: Encoding / Window records -> offset clean-up -> Tokenizer (construct, save,
encode, windows) -> batch padding -> character span <-> token span mapping.

Offsets are *character* offsets (Python ``str`` indices, i.e. code points, emoji included) into
the ORIGINAL text, end exclusive; special tokens get ``(-1, -1)``. ``tokenizers`` already reports
code-point offsets through its Python binding (pinned by a test). One case needs clean-up: when the
normalizer expands one character into several (NFD of a Hangul syllable, lowercase of "İ") and
WordPiece splits the expansion, several tokens point at the same character. We keep the
character on the first of them and give the others an empty span ``(e, e)`` at its end, so every
character belongs to at most one token and offsets never decrease (see :func:`token_boundaries`).

A tokenizer may carry a *pre-normaliser* (:meth:`Tokenizer.normalizing`, e.g. the bundle's
``models.normalize.Normalizer``: traditional -> simplified, full-width -> ASCII): a function that
maps each character to one character, applied before the library sees the text. Offsets into the
normalised text are then offsets into the original, and ``Encoding.text`` is the original.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Encoding as _HFEncoding
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

log = logging.getLogger(__name__)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
REQUIRED_SPECIALS = (PAD, UNK, CLS, SEP)
TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Encoding:
    """One encoded text. ``offsets[k]`` indexes ``text`` (or ``text_pair`` where ``type_ids[k] == 1``)."""

    ids: np.ndarray  # (n,) int64
    offsets: np.ndarray  # (n, 2) int64, specials (-1, -1)
    type_ids: np.ndarray  # (n,) int64
    text: str
    text_pair: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, eq=False)
class Window:
    """One window of a long text: ``[CLS] tokens[token_start : token_start + n - 2] [SEP]``."""

    ids: np.ndarray  # (n,) int64
    offsets: np.ndarray  # (n, 2) int64 into the whole original text, specials (-1, -1)
    token_start: int

    def __len__(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------------------------
# Offsets
# --------------------------------------------------------------------------------------------


def _clean_offsets(raw: np.ndarray, special: np.ndarray, seq_ids: np.ndarray) -> np.ndarray:
    """Specials -> (-1, -1); within each sequence make content offsets disjoint and non-decreasing."""
    out = raw.astype(np.int64, copy=True)  # (n, 2)
    out[special] = -1
    for seq in np.unique(seq_ids[~special]):
        idx = np.flatnonzero((seq_ids == seq) & ~special)
        starts, ends = out[idx, 0], out[idx, 1]
        prev_end = np.concatenate([[0], np.maximum.accumulate(ends)[:-1]])  # max end so far
        starts = np.maximum(starts, prev_end)
        out[idx, 0] = starts
        out[idx, 1] = np.maximum(ends, starts)
    return out


def token_boundaries(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(can_start, can_end)``: boolean (..., n) masks of the tokens a span may start / end on.

    ``offsets`` is (n, 2) or batched (..., n, 2). A span starts on a real, non-empty token and ends
    on a real token not followed by an empty one (empty tokens continue the character of the token
    before them). This makes the map from character spans to token spans one-to-one; for ordinary
    text both masks are just "not a special token".
    """
    offsets = np.asarray(offsets)
    real = offsets[..., 0] >= 0  # (..., n)
    empty = real & (offsets[..., 1] <= offsets[..., 0])
    next_empty = np.zeros_like(empty)
    next_empty[..., :-1] = empty[..., 1:]
    return real & ~empty, real & ~next_empty


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class Tokenizer:
    """BERT WordPiece tokenizer (``tokenizers`` library) returning offsets into the original text."""

    def __init__(self, tokenizer: _HFTokenizer) -> None:
        missing = [t for t in REQUIRED_SPECIALS if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer vocabulary lacks required special tokens {missing}")
        tokenizer.no_truncation()  # windows and limits are ours; offsets must cover the whole text
        tokenizer.no_padding()
        self._tok = tokenizer
        self.normalizer: Callable[[str], str] | None = None

    def normalizing(self, normalizer: Callable[[str], str] | None) -> Tokenizer:
        """This tokenizer (the same vocabulary and library object) with ``normalizer`` applied to every
        text before encoding. ``normalizer`` must keep each text's length (one character -> one
        character): offsets then index the original text. None: no pre-normaliser."""
        clone = object.__new__(Tokenizer)
        clone._tok, clone.normalizer = self._tok, normalizer
        return clone

    def _normalized(self, texts: list[str]) -> list[str]:
        if self.normalizer is None:
            return texts
        out = [self.normalizer(t) for t in texts]
        for k, (a, b) in enumerate(zip(texts, out)):
            if len(a) != len(b):
                raise ValueError(f"texts[{k}]: the normaliser changed the length ({len(a)} -> {len(b)})")
        return out

    # construction -------------------------------------------------------------------------

    @classmethod
    def from_vocab(cls, vocab_path: str | Path, *, lowercase: bool = True) -> Tokenizer:
        """BERT WordPiece from a ``vocab.txt`` (one token a line, id = line number)."""
        vocab: dict[str, int] = {}
        with open(vocab_path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                vocab[line.rstrip("\r\n")] = i  # a later duplicate wins, as in transformers
        missing = [t for t in REQUIRED_SPECIALS if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_path}: vocabulary lacks required special tokens {missing}")
        model = WordPiece(vocab, unk_token=UNK, continuing_subword_prefix="##", max_input_chars_per_word=100)
        tok = _HFTokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = [(CLS, vocab[CLS]), (SEP, vocab[SEP])]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1", special_tokens=specials
        )
        # The specials are deliberately not registered as added tokens: a literal "[SEP]" typed in
        # user text is tokenized as text, never as a control token.
        log.debug("built WordPiece tokenizer from %s (%d tokens)", vocab_path, len(vocab))
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        """Load a ``tokenizer.json``."""
        return cls(_HFTokenizer.from_file(str(path)))

    @classmethod
    def load(cls, dir_or_file: str | Path, *, lowercase: bool = True) -> Tokenizer:
        """Load ``tokenizer.json`` (preferred) or ``vocab.txt`` from a directory, or either file."""
        p = Path(dir_or_file)
        if p.is_dir():
            if (p / TOKENIZER_FILE).is_file():
                return cls.from_file(p / TOKENIZER_FILE)
            if (p / VOCAB_FILE).is_file():
                return cls.from_vocab(p / VOCAB_FILE, lowercase=lowercase)
            raise FileNotFoundError(f"{p}: neither {TOKENIZER_FILE} nor {VOCAB_FILE} found")
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file or directory")
        if p.suffix == ".txt":
            return cls.from_vocab(p, lowercase=lowercase)
        return cls.from_file(p)

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` (``path`` is a directory or the file itself); return the file."""
        p = Path(path)
        if p.is_dir() or not p.suffix:
            p.mkdir(parents=True, exist_ok=True)
            p = p / TOKENIZER_FILE
        self._tok.save(str(p))
        return p

    # vocabulary ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def _special(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        assert i is not None  # checked in __init__
        return i

    @property
    def pad_id(self) -> int:
        return self._special(PAD)

    @property
    def unk_id(self) -> int:
        return self._special(UNK)

    @property
    def cls_id(self) -> int:
        return self._special(CLS)

    @property
    def sep_id(self) -> int:
        return self._special(SEP)

    @property
    def mask_id(self) -> int | None:
        return self._tok.token_to_id(MASK)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, id: int) -> str | None:
        return self._tok.id_to_token(id)

    # encoding -----------------------------------------------------------------------------

    @staticmethod
    def _convert(
        encs: Sequence[_HFEncoding], texts: Sequence[str], pair: str | None = None
    ) -> list[Encoding]:
        """The library's encodings -> :class:`Encoding` records, in one numpy pass over the whole batch.

        Every record's arrays are read-only views of a few batch arrays (no per-text numpy work).
        :func:`_clean_offsets` runs only where it changes something: on encodings in which a content
        token starts before the one before it ended, or ends before it starts (a normaliser expanded
        a character: Hangul NFD, "İ" lowercased). Elsewhere the offsets already are disjoint and
        non-decreasing. (A pair, from :meth:`encode_pair`, is always cleaned.)
        """
        if not encs:
            return []
        lengths = [len(e) for e in encs]
        bounds = [0, *itertools.accumulate(lengths)]
        N = bounds[-1]
        chain = itertools.chain.from_iterable
        ids = np.fromiter(chain(e.ids for e in encs), dtype=np.int64, count=N)  # (N,)
        type_ids = np.fromiter(chain(e.type_ids for e in encs), dtype=np.int64, count=N)  # (N,)
        flat = np.fromiter(chain(chain(e.offsets for e in encs)), dtype=np.int64, count=2 * N)
        offsets = flat.reshape(N, 2)
        special = np.fromiter(chain(e.special_tokens_mask for e in encs), dtype=bool, count=N)  # (N,)
        offsets[special] = -1
        if pair is not None:
            seq_ids = np.array([-1 if s is None else s for s in encs[0].sequence_ids], dtype=np.int64)
            offsets = _clean_offsets(offsets, special, seq_ids)
        else:
            content = np.flatnonzero(~special)  # (M,)
            starts, ends = offsets[content, 0], offsets[content, 1]  # (M,) each
            if len(encs) > 1:
                # Shift each text's offsets past the texts before it: the content offsets of the whole
                # batch are then disjoint and non-decreasing exactly where those of each encoding are.
                base = np.fromiter(itertools.accumulate((len(t) + 1 for t in texts[:-1]), initial=0), int)
                shift = np.repeat(base, lengths)[content]  # (M,)
                starts, ends = starts + shift, ends + shift
            bad = ends < starts
            bad[1:] |= starts[1:] < ends[:-1]
            if bad.any():
                seq_ids = np.where(special, -1, 0)  # (N,) one sequence
                for k in np.unique(np.searchsorted(bounds, content[bad], side="right") - 1).tolist():
                    a, b = bounds[k], bounds[k + 1]
                    offsets[a:b] = _clean_offsets(offsets[a:b], special[a:b], seq_ids[a:b])
        ids, offsets, type_ids = _frozen(ids), _frozen(offsets), _frozen(type_ids)
        return [
            Encoding(ids=ids[a:b], offsets=offsets[a:b], type_ids=type_ids[a:b], text=t, text_pair=pair)
            for (a, b), t in zip(itertools.pairwise(bounds), texts)
        ]

    @staticmethod
    def _check(texts: Sequence[object]) -> None:
        for k, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{k}]: expected str, got {type(t).__name__}")
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"texts[{k}]: not valid Unicode ({e.reason} at {e.start})") from None

    def encode(self, text: str, *, add_special_tokens: bool = True) -> Encoding:
        """Encode one text (``[CLS] ... [SEP]`` unless ``add_special_tokens=False``)."""
        self._check([text])
        (seen,) = self._normalized([text])
        return self._convert([self._tok.encode(seen, add_special_tokens=add_special_tokens)], [text])[0]

    def encode_batch(self, texts: Sequence[str], *, add_special_tokens: bool = True) -> list[Encoding]:
        """Encode many texts at once (the library encodes them in parallel)."""
        texts = list(texts)
        self._check(texts)
        seen = self._normalized(texts)
        return self._convert(self._tok.encode_batch(seen, add_special_tokens=add_special_tokens), texts)

    def encode_ids(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids only, ``[CLS] ... [SEP]`` per text, read-only int64: what ``encode_batch`` gives as
        ``ids``, without the cost of offsets (embeddings and similarity need none)."""
        texts = list(texts)
        self._check(texts)
        # the same ids, offsets not tracked (tokenizers >= 0.20; pyproject allows 0.19, which lacks it)
        encs = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)(self._normalized(texts))
        bounds = [0, *itertools.accumulate(len(e) for e in encs)]
        ids = np.fromiter(itertools.chain.from_iterable(e.ids for e in encs), np.int64, bounds[-1])
        ids = _frozen(ids)  # (N,) all texts; one view each
        return [ids[a:b] for a, b in itertools.pairwise(bounds)]

    def encode_pair(self, a: str, b: str) -> Encoding:
        """``[CLS] a [SEP] b [SEP]`` with ``type_ids`` 0 / 1; offsets index ``a`` or ``b`` by type."""
        self._check([a, b])
        return self._convert([self._tok.encode(*self._normalized([a, b]))], [a], b)[0]

    # windows ------------------------------------------------------------------------------

    def windows(self, encoding: Encoding, *, max_length: int, stride: int) -> list[Window]:
        """Cut an encoded text into ``[CLS] ... [SEP]`` windows of at most ``max_length`` tokens.

        The encoding's own special tokens are left out (it may come with or without them), so a
        text encoded once serves both as one row and, when too long, as windows. Windows start
        ``stride`` content tokens apart; the last one ends at the last token and is shifted back to
        be full (so none is contained in the one before). Every token is in at least one window when
        ``stride <= max_length - 2``.
        """
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (room for [CLS], [SEP] and a token), got {max_length}")
        width = max_length - 2
        if not 0 < stride <= width:
            raise ValueError(f"stride must be in [1, max_length - 2 = {width}], got {stride}")
        if encoding.text_pair is not None:
            raise ValueError("windows cut one text, not a pair")
        content = encoding.offsets[:, 0] >= 0  # (n,) specials have (-1, -1)
        ids, offsets = encoding.ids[content], encoding.offsets[content]  # (n,), (n, 2)
        n = len(ids)
        starts = [0]
        while starts[-1] + width < n:
            starts.append(min(starts[-1] + stride, n - width))
        cls_ids = np.array([self.cls_id], dtype=np.int64)
        sep_ids = np.array([self.sep_id], dtype=np.int64)
        no_offset = np.full((1, 2), -1, dtype=np.int64)
        windows = []
        for s in starts:
            e = min(s + width, n)
            window_ids = np.concatenate([cls_ids, ids[s:e], sep_ids])
            window_offsets = np.concatenate([no_offset, offsets[s:e], no_offset])
            windows.append(Window(ids=_frozen(window_ids), offsets=_frozen(window_offsets), token_start=s))
        return windows

    def encode_windows(self, text: str, *, max_length: int, stride: int) -> list[Window]:
        """``windows(encode(text))``: a text cut into windows (see :meth:`windows`)."""
        return self.windows(self.encode(text, add_special_tokens=False), max_length=max_length, stride=stride)


# --------------------------------------------------------------------------------------------
# Batching and span mapping
# --------------------------------------------------------------------------------------------


def pad_batch(seqs: Sequence[np.ndarray], *, pad_id: int, multiple_of: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest (rounded up to ``multiple_of``): ``(input_ids, attention_mask)``, int64 (B, T)."""
    if not seqs:
        raise ValueError("pad_batch needs at least one sequence")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)  # (B,)
    longest = int(lengths.max())
    T = -(-longest // multiple_of) * multiple_of
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)  # (B, T)
    ids = np.full((len(seqs), T), pad_id, dtype=np.int64)
    if longest:
        ids[mask.astype(bool)] = np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in seqs])
    return ids, mask


def char_spans_to_token_spans(offsets: np.ndarray, spans: np.ndarray | Iterable[tuple[int, int]]) -> np.ndarray:
    """Vectorised :func:`char_span_to_token_span`: (N, 2) ``[start, end)`` -> (N, 2) ``(i, j)``, rows of -1 for None.

    ``offsets`` are those of one text (an :class:`Encoding` or :class:`Window`, not a pair).
    """
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    spans = np.asarray(list(spans) if not isinstance(spans, np.ndarray) else spans, dtype=np.int64).reshape(-1, 2)
    can_start, can_end = token_boundaries(offsets)
    start_pos, end_pos = np.flatnonzero(can_start), np.flatnonzero(can_end)
    tok_starts, tok_ends = offsets[start_pos, 0], offsets[end_pos, 1]  # both strictly increasing

    k = np.searchsorted(tok_starts, spans[:, 0], side="left")  # (N,)
    k_ok = k < len(tok_starts)
    k_ok[k_ok] &= tok_starts[k[k_ok]] == spans[k_ok, 0]
    m = np.searchsorted(tok_ends, spans[:, 1], side="right") - 1  # (N,)
    m_ok = m >= 0
    m_ok[m_ok] &= tok_ends[m[m_ok]] == spans[m_ok, 1]

    out = np.full_like(spans, -1)
    ok = k_ok & m_ok & (spans[:, 0] < spans[:, 1])
    out[ok, 0] = start_pos[k[ok]]
    out[ok, 1] = end_pos[m[ok]]
    out[out[:, 1] < out[:, 0]] = -1
    return out


def char_span_to_token_span(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """Inclusive token span ``(i, j)`` whose tokens exactly cover characters ``[start, end)``.

    None when a boundary falls inside a token, on a space between tokens' edges, or the span is empty.
    """
    i, j = char_spans_to_token_spans(offsets, np.array([[start, end]]))[0]
    return None if i < 0 else (int(i), int(j))
