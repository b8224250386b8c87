"""Offset-preserving text normalisation, applied before the tokenizer (torch-free: stdlib + OpenCC).

Every conversion here maps **one character to one character**, so the normalised text has the same
length as the original and every offset into it is an offset into the original: entities, token
offsets and windows keep pointing at what the user sent, and the ``text`` of an entity is cut from
the original. Two conversions, each a flag of :class:`Normalize` (recorded in the bundle manifest as
``normalize: {width, t2s}``, so training, evaluation and serving apply the same):

* ``width``: full-width Latin letters and digits (``Ａ``-``Ｚ``, ``ａ``-``ｚ``, ``０``-``９``) -> ASCII.
  Full-width CJK punctuation (``，。！？：；（）``) is left alone: it is the norm in Chinese text
  and what the vocabulary learned, so turning ``，`` into ``,`` would shift the input, not repair it.
* ``t2s``: traditional -> simplified Chinese with OpenCC's ``t2s`` dictionaries, one character at a
  time. The phrase-aware conversion of the whole text is used only to *keep* a character OpenCC
  keeps in context (``乾隆`` stays, ``乾燥`` -> ``干燥``): each output character is either the original
  one or its own one-character conversion, never a character moved by a phrase of another length.

Read top to bottom: :class:`Normalize` (the manifest's record) -> the width table -> the t2s table
(built once per process from OpenCC) -> :class:`Normalizer` (the callable the tokenizer applies).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field


class Normalize(BaseModel):
    """What a bundle normalises before tokenizing (``bundle.json``: ``"normalize": {"width": true, ...}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: bool = Field(False, description="full-width Latin letters and digits -> ASCII")
    t2s: bool = Field(False, description="traditional -> simplified Chinese (OpenCC t2s, one character each)")

    @property
    def enabled(self) -> bool:
        return self.width or self.t2s

    def describe(self) -> str:
        """``width,t2s`` / ``width`` / ``t2s`` / ``none``: how the CLI option and /info spell it."""
        return ",".join(k for k in ("width", "t2s") if getattr(self, k)) or "none"

    @classmethod
    def parse(cls, value: str) -> Normalize:
        """``none`` | ``width`` | ``t2s`` | ``width,t2s`` (any order; ``all`` = both) -> a :class:`Normalize`."""
        parts = {p.strip().lower() for p in value.split(",") if p.strip()}
        if parts == {"all"}:
            parts = {"width", "t2s"}
        if parts == {"none"}:
            parts = set()
        unknown = parts - {"width", "t2s"}
        if unknown or not value.strip():
            raise ValueError(f"normalize must be none, width, t2s, width,t2s or all; got {value!r}")
        return cls(width="width" in parts, t2s="t2s" in parts)


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------

_FULLWIDTH_ALNUM = [
    *range(ord("０"), ord("９") + 1), *range(ord("Ａ"), ord("Ｚ") + 1), *range(ord("ａ"), ord("ｚ") + 1),
]
WIDTH_TABLE: dict[int, str] = {c: chr(c - 0xFEE0) for c in _FULLWIDTH_ALNUM}  # U+FF10.. -> U+0030..

# the code points a t2s table is built over: CJK unified ideographs (extension A, the main block) and
# the compatibility ideographs; OpenCC's other entries convert characters of the supplementary planes
# that no Chinese vocabulary of this project holds
_CJK_RANGES = ((0x3400, 0x4DC0), (0x4E00, 0xA000), (0xF900, 0xFB00))


class NormalizerUnavailable(RuntimeError):
    """``t2s`` asked for, but OpenCC is not installed (it comes with ropenlp's core dependencies)."""


@functools.cache
def _opencc(config: str):
    try:
        import opencc
    except ImportError as e:  # pragma: no cover - a core dependency
        raise NormalizerUnavailable(
            "normalize t2s needs OpenCC: pip install opencc (ropenlp's core dependencies include it)"
        ) from e
    return opencc.OpenCC(config)


@functools.cache
def t2s_table() -> dict[int, str]:
    """OpenCC t2s of every CJK character on its own, where it converts to one other character.

    One call over all ~28,000 characters, separated by newlines (no phrase spans a newline): a few
    milliseconds, once per process."""
    chars = [chr(c) for lo, hi in _CJK_RANGES for c in range(lo, hi)]
    out = _opencc("t2s").convert("\n".join(chars)).split("\n")
    if len(out) != len(chars):  # pragma: no cover - OpenCC maps newline to newline
        raise RuntimeError("OpenCC t2s changed the number of lines of the character table")
    return {ord(a): b for a, b in zip(chars, out) if b != a and len(b) == 1}


class Normalizer:
    """``normalizer(text) -> text'`` with ``len(text') == len(text)`` and ``text'[i]`` a conversion of
    ``text[i]`` alone (see the module docstring). Identity when nothing is enabled."""

    def __init__(self, spec: Normalize) -> None:
        self.spec = spec
        table: dict[int, str] = {}
        if spec.width:
            table |= WIDTH_TABLE
        self._t2s = t2s_table() if spec.t2s else None
        if self._t2s is not None:
            table |= self._t2s
        self._table = table

    def __call__(self, text: str) -> str:
        if not self._table:
            return text
        out = text.translate(self._table)
        if self._t2s is not None and out != text:
            out = self._keep_in_context(text, out)
        return out

    def many(self, texts: Iterable[str]) -> list[str]:
        return [self(t) for t in texts]

    def _keep_in_context(self, text: str, table_out: str) -> str:
        """Where OpenCC's phrase-aware conversion of the whole text keeps a character the table would
        convert (``乾`` in ``乾隆``), keep it. Used only when that conversion has the text's length."""
        phrase = _opencc("t2s").convert(text)
        if len(phrase) != len(text):
            return table_out
        chars = list(table_out)
        for k, (a, b, p) in enumerate(zip(text, table_out, phrase)):
            if p == a and a != b and ord(a) in self._t2s:
                chars[k] = a
        return "".join(chars)

    def __repr__(self) -> str:
        return f"Normalizer({self.spec.describe()})"


def normalizer_for(spec: Normalize | str | None) -> Normalizer | None:
    """The normaliser of a spec (or its ``width,t2s`` spelling, as checkpoints record it); None when it
    normalises nothing (what ``Tokenizer.normalizing`` takes)."""
    if spec is None:
        return None
    spec = Normalize.parse(spec) if isinstance(spec, str) else spec
    return Normalizer(spec) if spec.enabled else None
