"""User lexicons for NER: terms a team adds as entities, or blocks, on top of the model.

An entry is ``(term, label, action)``: ``add`` makes every occurrence of ``term`` an entity of
``label`` (any label, also one the model does not know, e.g. a team's ``product``); ``block``
removes the model's entities whose text equals ``term`` (of ``label``, or of any label when the
label is ``*`` or empty). Three sources, applied in this order, a later entry for the same
``(term, label)`` replacing an earlier one (so a request can turn the bundle's ``add`` into a
``block``):

1. ``lexicon.tsv`` in the bundle (optional),
2. the server's ``--lexicon FILE`` (``ROPENLP_LEXICON``; also ``ropenlp score ner --lexicon FILE``),
3. the request's ``lexicon`` field (a list of ``{"term", "label", "action"}``).

File format: UTF-8, one entry a line, tab-separated ``term<TAB>label<TAB>action`` (action defaults to
``add``); blank lines and lines starting with ``#`` are skipped.

Terms are matched on the *normalised* text (the bundle's ``normalize``: a simplified term also finds
its traditional spelling) with an Aho-Corasick automaton (``pyahocorasick``), every occurrence,
overlapping ones included. An added span gets the score :data:`LEXICON_SCORE` and ``source:
"lexicon"``; the merge happens after the model's windows are merged and before flat / nested
decoding, so in ``flat`` mode a lexicon term wins over any model span it overlaps (and, among
overlapping lexicon terms, the longest, then the leftmost, wins). An ``add`` term is never blocked:
use one source's entries to replace another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from models.spans import Entity

Action = Literal["add", "block"]
ACTIONS: tuple[Action, ...] = ("add", "block")
ANY_LABEL = "*"
LEXICON_SCORE = 100.0  # above any GlobalPointer span score met in practice (logits of a few units)
LEXICON_FILE = "lexicon.tsv"
MAX_TERM_CHARS = 100
MAX_LABEL_CHARS = 64


class LexiconError(ValueError):
    """A lexicon file or entry that cannot be used: the message names the line or the field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field  # "term" | "label" | "action" for an entry's problem


@dataclass(frozen=True)
class Entry:
    term: str
    label: str
    action: Action = "add"


def check_entry(term: object, label: object, action: object) -> Entry:
    """One entry, checked; :class:`LexiconError` with the offending ``field`` (term, label, action)."""
    if not isinstance(term, str) or not term.strip():
        raise LexiconError("term must be a non-empty string", "term")
    if len(term) > MAX_TERM_CHARS:
        raise LexiconError(f"term has {len(term)} characters; at most {MAX_TERM_CHARS}", "term")
    if action not in ACTIONS:
        raise LexiconError(f"action must be 'add' or 'block', got {action!r}", "action")
    label = "" if label is None else label
    if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
        raise LexiconError(f"label must be a string of at most {MAX_LABEL_CHARS} characters", "label")
    label = label.strip()
    if action == "add" and label in ("", ANY_LABEL):
        raise LexiconError("an 'add' entry needs a label", "label")
    return Entry(term.strip(), label or ANY_LABEL, action)


def read_tsv(path: str | Path) -> list[Entry]:
    """Entries of a ``term<TAB>label<TAB>action`` file (see the module docstring)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LexiconError(f"cannot read lexicon {path}: {e}") from None
    entries = []
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2 or len(cols) > 3:
            raise LexiconError(f"{path}:{n}: expected term<TAB>label[<TAB>add|block], got {len(cols)} column(s)")
        action = (cols[2].strip() or "add") if len(cols) == 3 else "add"
        try:
            entries.append(check_entry(cols[0], cols[1], action))
        except LexiconError as e:
            raise LexiconError(f"{path}:{n}: {e}") from None
    return entries


class Lexicon:
    """Entries (later ones replacing earlier ones of the same ``(term, label)``), matched on normalised
    text. ``normalize`` is the bundle's pre-normaliser (the tokenizer's), applied to terms and texts."""

    def __init__(self, entries: Iterable[Entry], normalize: Callable[[str], str] | None = None) -> None:
        self._norm = normalize or (lambda s: s)
        by_key: dict[tuple[str, str], Entry] = {}
        for e in entries:
            by_key[(self._norm(e.term), e.label)] = e
        self.entries = list(by_key.values())
        self.adds: dict[str, list[str]] = {}  # normalised term -> labels
        self.blocks: dict[str, set[str]] = {}  # normalised term -> labels ("*": any)
        for (term, label), e in by_key.items():
            (self.adds.setdefault(term, []).append(label) if e.action == "add"
             else self.blocks.setdefault(term, set()).add(label))  # fmt: skip
        self._auto = None
        if self.adds:
            import ahocorasick

            self._auto = ahocorasick.Automaton()
            for term in self.adds:
                self._auto.add_word(term, term)
            self._auto.make_automaton()

    def __len__(self) -> int:
        return len(self.entries)

    def fingerprint(self) -> str:
        """SHA-256 of the entries (what a resumed ``score`` run must see unchanged)."""
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e.term}\t{e.label}\t{e.action}\n".encode())
        return h.hexdigest()

    def extended(self, entries: Sequence[Entry]) -> Lexicon:
        """This lexicon with ``entries`` applied after its own (a request's)."""
        return Lexicon([*self.entries, *entries], self._norm) if entries else self

    def apply(self, text: str, entities: Sequence[Entity], *, flat: bool) -> list[Entity]:
        """The model's ``entities`` of ``text`` with blocked ones removed and added terms merged in,
        sorted by (start, end, label). ``flat``: keep only non-overlapping added terms (longest, then
        leftmost, first); the decoding that follows then prefers them over model spans."""
        if not self.entries:
            return list(entities)
        norm = self._norm(text)
        kept = [e for e in entities if not self._blocked(norm[e.start : e.end], e.label)]
        added = self._matches(norm) if self._auto is not None else []
        if flat:
            added = _longest_first(added)
        have = {(e.start, e.end, e.label) for e in kept}
        for start, end, term in added:
            for label in self.adds[term]:
                if (start, end, label) in have:  # the model found it too: the lexicon's entity replaces it
                    kept = [e for e in kept if (e.start, e.end, e.label) != (start, end, label)]
                kept.append(Entity(start, end, label, text[start:end], LEXICON_SCORE, source="lexicon"))
        return sorted(kept, key=lambda e: (e.start, e.end, e.label))

    def _blocked(self, norm_span: str, label: str) -> bool:
        labels = self.blocks.get(norm_span)
        return labels is not None and (ANY_LABEL in labels or label in labels)

    def _matches(self, norm: str) -> list[tuple[int, int, str]]:
        """Every occurrence ``(start, end, term)`` of an added term (end exclusive)."""
        return [(end + 1 - len(term), end + 1, term) for end, term in self._auto.iter(norm)]

    def info(self) -> dict[str, int]:
        return {"entries": len(self.entries), "add": sum(map(len, self.adds.values())),
                "block": sum(map(len, self.blocks.values()))}  # fmt: skip


def _longest_first(matches: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Non-overlapping matches, the longest (then the leftmost) chosen first."""
    taken: list[tuple[int, int]] = []
    out = []
    for m in sorted(matches, key=lambda m: (m[0] - m[1], m[0])):
        if all(m[1] <= s or m[0] >= e for s, e in taken):
            taken.append((m[0], m[1]))
            out.append(m)
    return sorted(out)


def load(paths: Iterable[str | Path | None], normalize: Callable[[str], str] | None = None) -> Lexicon:
    """The lexicon of the given files, in order (None and missing bundle files skipped by the caller)."""
    entries: list[Entry] = []
    for p in paths:
        if p is not None:
            entries += read_tsv(p)
    return Lexicon(entries, normalize)


__all__ = ["ACTIONS", "Entry", "LEXICON_FILE", "LEXICON_SCORE", "Lexicon", "LexiconError", "check_entry",
           "load", "read_tsv"]
