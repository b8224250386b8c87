"""NER data: readers for labelled files, and their alignment to token windows (torch-free).

Read top to bottom: records -> entity checks -> CLUENER / CMeEE (JSON lines or one JSON array) /
BIO-BIOES column readers (each on :class:`training.data.ReadReport`, naming file and line for every
record it rejects) -> format detection -> alignment of character spans to token windows, with
:class:`AlignStats` counting every entity that cannot be a target.

Spans are held as ``[start, end)`` character offsets into the text (end exclusive, like
:class:`models.spans.Entity`); the files' inclusive ends are converted on reading.

What happens to an entity:

* its text does not match its offsets, its offsets are out of range or reversed, its type is not a
  string: the whole **record** is an error (``file:line: reason``), like unparsable JSON;
* a boundary falls inside a token (e.g. "2024" is one token and the entity is "202"): the record is
  kept, the entity cannot be a target; it is **counted** (``misaligned``) with examples, logged when
  loading ends and written to the metrics (it stays in the gold set for evaluation, where it counts
  as missed);
* the text is longer than one window: the entity is a target in every window that holds it whole;
  each window that cuts it counts as a ``window_cut`` and an entity no window holds whole counts as
  ``lost`` (never with ``stride <= max_length - 2 - longest entity``);
* the same (start, end, type) twice in one record is kept once and counted (``duplicates``).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from models.text import Tokenizer, Window, char_spans_to_token_spans
from training.data import ReadReport, expand_paths, json_objects, numbered_lines

log = logging.getLogger(__name__)

NerFormat = Literal["auto", "cluener", "cmeee", "spans", "bio", "bioes"]
NER_FORMATS: tuple[str, ...] = ("auto", "cluener", "cmeee", "spans", "bio", "bioes")
EXAMPLES_KEPT = 10  # examples of each counted problem kept for the report


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    start: int
    end: int  # exclusive
    label: str


@dataclass(frozen=True)
class NerRecord:
    text: str
    spans: tuple[Span, ...]
    path: str
    line: int  # 1-based line of the record (BIO: of its first token; JSON array: of its opening brace)
    duplicates: int = 0  # entities listed more than once in the file's record (kept once in spans)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


class _BadRecord(ValueError):
    """A record that cannot be used; the message becomes its ReadError reason."""


def _int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRecord(f"{what} is {value!r}, expected an integer")
    return value


def _checked_span(text: str, start: object, end_inclusive: object, label: object,
                  entity: object = None) -> Span:
    """A span from a file's inclusive offsets, checked against the text."""
    if not isinstance(label, str) or not label:
        raise _BadRecord(f"entity type {label!r} is not a non-empty string")
    s, e = _int(start, f"start of a {label} entity"), _int(end_inclusive, f"end of a {label} entity")
    if not 0 <= s <= e < len(text):
        raise _BadRecord(f"{label} entity [{s}, {e}] is outside the text (length {len(text)}) or reversed")
    if entity is not None:
        if not isinstance(entity, str):
            raise _BadRecord(f"entity text of {label} [{s}, {e}] is {type(entity).__name__}, expected a string")
        if text[s:e + 1] != entity:
            raise _BadRecord(f"{label} entity {entity!r} at [{s}, {e}] does not match the text there "
                             f"({text[s:e + 1]!r})")
    return Span(s, e + 1, label)


def _text_of(obj: dict) -> str:
    text = obj.get("text")
    if not isinstance(text, str):
        raise _BadRecord("no 'text' string" if text is None else f"'text' is {type(text).__name__}, expected a string")
    return text


def cluener_spans(obj: object) -> tuple[str, list[Span]]:
    """``{"text": ..., "label": {type: {entity: [[start, end_inclusive], ...]}}}``."""
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    text = _text_of(obj)
    if "label" not in obj:
        raise _BadRecord(f"no 'label' field (keys: {', '.join(sorted(obj))}); a CLUENER record needs one, "
                         "{} when it has no entity")
    labels = obj["label"] or {}
    if not isinstance(labels, dict):
        raise _BadRecord(f"'label' is {type(labels).__name__}, expected {{type: {{entity: [[start, end]]}}}}")
    spans = []
    for label, entities in labels.items():
        if not isinstance(entities, dict):
            raise _BadRecord(f"label[{label!r}] is {type(entities).__name__}, expected {{entity: [[start, end]]}}")
        for entity, positions in entities.items():
            if not isinstance(positions, list) or not all(isinstance(p, list) and len(p) == 2 for p in positions):
                raise _BadRecord(f"label[{label!r}][{entity!r}] is {positions!r}, expected [[start, end], ...]")
            spans += [_checked_span(text, s, e, label, entity) for s, e in positions]
    return text, spans


def _entity_list(obj: object, start: str, end: str, *, end_inclusive: bool,
                 text_key: str) -> tuple[str, list[Span]]:
    """``{"text": ..., "entities": [{start, end, "type", text_key?}]}``, the end inclusive or not."""
    if not isinstance(obj, dict):
        raise _BadRecord(f"expected a JSON object, got {type(obj).__name__}")
    text = _text_of(obj)
    if "entities" not in obj:
        raise _BadRecord(f"no 'entities' field (keys: {', '.join(sorted(obj))}); [] when it has no entity")
    entities = obj["entities"] or []
    if not isinstance(entities, list):
        raise _BadRecord(f"'entities' is {type(entities).__name__}, expected a list")
    spans = []
    for k, ent in enumerate(entities):
        if not isinstance(ent, dict) or not {start, end, "type"} <= ent.keys():
            raise _BadRecord(f"entities[{k}] = {ent!r}: expected an object with {start}, {end}"
                             f"{'' if end_inclusive else ' (exclusive)'}, type")
        last = ent[end] if end_inclusive else _int(ent[end], f"end of a {ent['type']} entity") - 1
        spans.append(_checked_span(text, ent[start], last, ent["type"], ent.get(text_key)))
    return text, spans


def cmeee_spans(obj: object) -> tuple[str, list[Span]]:
    """``{"text": ..., "entities": [{"start_idx", "end_idx" (inclusive), "type", "entity"}]}`` (CBLUE)."""
    return _entity_list(obj, "start_idx", "end_idx", end_inclusive=True, text_key="entity")


def plain_spans(obj: object) -> tuple[str, list[Span]]:
    """``{"text": ..., "entities": [{"start", "end" (exclusive), "type", "text"?}]}``: the offsets the service
    returns (``text[start:end]`` is the entity), as in ``../shared/data/ner_more``."""
    return _entity_list(obj, "start", "end", end_inclusive=False, text_key="text")


_JSON_PARSERS = {"cluener": cluener_spans, "cmeee": cmeee_spans, "spans": plain_spans}


def _record(text: str, spans: list[Span], path: Path, line: int) -> NerRecord:
    unique = sorted(set(spans), key=lambda s: (s.start, s.end, s.label))
    return NerRecord(text, tuple(unique), str(path), line, duplicates=len(spans) - len(unique))


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_json_lines(path: str | Path, report: ReadReport, *, format: str) -> Iterator[NerRecord]:
    """One JSON object per line (CLUENER ``train.json``, CMeEE ``.jsonl``)."""
    parse, path = _JSON_PARSERS[format], Path(path)
    for n, obj in json_objects(path, report):
        try:
            text, spans = parse(obj)
        except _BadRecord as e:
            report.error(path, n, str(e))
            continue
        if not text.strip():
            report.empty += 1
            continue
        report.records += 1
        yield _record(text, spans, path, n)


def read_json_array(path: str | Path, report: ReadReport, *, format: str = "cmeee") -> Iterator[NerRecord]:
    """A file holding one JSON array of records (CBLUE ``CMeEE_train.json``), any layout.

    Elements are decoded one at a time (``raw_decode``), so each error names the line where its
    record starts; a syntax error stops the file there (nothing after it can be located).
    """
    parse, path = _JSON_PARSERS[format], Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        report.files.setdefault(str(path), 0)
        report.error(path, 1, f"invalid UTF-8 at byte {e.start}")
        return
    report.files[str(path)] = report.files.get(str(path), 0) + content.count("\n") + (not content.endswith("\n"))
    decoder, ws = json.JSONDecoder(), re.compile(r"\s*")

    def line_at(pos: int) -> int:
        return content.count("\n", 0, pos) + 1

    pos = ws.match(content, 0).end()
    if not content.startswith("[", pos):
        report.error(path, line_at(pos), "expected a JSON array of records ('[' first)")
        return
    pos = ws.match(content, pos + 1).end()
    if content.startswith("]", pos):
        return
    while True:
        try:
            obj, end = decoder.raw_decode(content, pos)
        except json.JSONDecodeError as e:
            report.error(path, e.lineno, f"invalid JSON: {e.msg} at column {e.colno}; the rest of the file "
                                         "is not read")
            return
        try:
            text, spans = parse(obj)
        except _BadRecord as e:
            report.error(path, line_at(pos), str(e))
        else:
            if text.strip():
                report.records += 1
                yield _record(text, spans, path, line_at(pos))
            else:
                report.empty += 1
        pos = ws.match(content, end).end()
        if content.startswith(",", pos):
            pos = ws.match(content, pos + 1).end()
        elif content.startswith("]", pos):
            return
        else:
            report.error(path, line_at(pos), "expected ',' or ']' after a record; the rest of the file is not read")
            return


_TAG = re.compile(r"^(?:O|([BIMES])-(.+))$")


def read_bio(path: str | Path, report: ReadReport) -> Iterator[NerRecord]:
    """Column files: ``token<space or tab>tag`` per line, a blank line between sentences.

    Tags: ``O``, ``B-X``, ``I-X`` (BIO / IOB2) and ``E-X``, ``S-X``, ``M-X`` (BIOES / BMES); the text is
    the tokens joined without separator. An entity ends at ``E-``, ``O``, ``B-``, ``S-`` or the end of
    the sentence. ``I-X``/``M-X``/``E-X`` with no open ``X`` entity before it is an error for the
    sentence (reported at that line), as is a line without a tag. A record's line is that of its
    first token.
    """
    path = Path(path)
    tokens: list[str] = []
    spans: list[Span] = []
    first, bad, pos = 0, None, 0
    open_: tuple[str, int] | None = None  # (label, start char) of the entity being read

    def flush():
        nonlocal tokens, spans, first, bad, pos, open_
        rec = None
        if bad is not None:
            if bad[1] is not None:  # None: already reported (invalid UTF-8)
                report.error(path, bad[0], bad[1])
        else:
            if open_ is not None:
                spans.append(Span(open_[1], pos, open_[0]))
            report.records += 1
            rec = _record("".join(tokens), spans, path, first)
        tokens, spans, first, bad, pos, open_ = [], [], 0, None, 0, None
        return rec

    for n, line in numbered_lines(path, report):
        if line is None:  # invalid UTF-8: already an error; the sentence is lost with it
            first = first or n
            tokens.append("?")
            bad = bad or (n, None)
            continue
        if not line.strip():
            if not tokens:
                report.empty += 1
                continue
            rec = flush()
            if rec is not None:
                yield rec
            continue
        if not tokens:
            first = n
        cut = max(line.rfind(" "), line.rfind("\t"))
        token, tag = line[:cut].rstrip(" \t"), line[cut + 1:]
        m = _TAG.match(tag)
        if cut < 0 or not token or m is None:
            bad = bad or (n, f"expected 'token tag' with a tag O, B-X, I-X, E-X, S-X or M-X, got {line!r}")
            tokens.append(token or "?")
            continue
        kind, label = m.groups()
        start = pos
        pos += len(token)
        tokens.append(token)
        if kind in (None, "B", "S") and open_ is not None:  # O, B-, S- close the open entity
            spans.append(Span(open_[1], start, open_[0]))
            open_ = None
        if kind == "B":
            open_ = (label, start)
        elif kind == "S":
            spans.append(Span(start, pos, label))
        elif kind in ("I", "M", "E"):
            if open_ is None or open_[0] != label:
                bad = bad or (n, f"tag {tag} continues no open {label} entity (previous tag is not B-/I-/M-{label})")
                open_ = None
                continue
            if kind == "E":
                spans.append(Span(open_[1], pos, label))
                open_ = None
    if tokens:
        rec = flush()
        if rec is not None:
            yield rec


def detect_format(path: str | Path, *, look: int = 100) -> str:
    """``cluener``, ``cmeee`` or ``spans`` (JSON lines), ``cmeee-array`` or ``bio``, from the first non-blank
    content; JSON lines with ``entities`` are ``spans`` when the first entity within ``look`` records has
    ``start``/``end`` rather than ``start_idx``/``end_idx``."""
    json_lines = 0
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            s = line.strip()
            if not s:
                continue
            if not json_lines:
                if s.startswith("["):
                    return "cmeee-array"
                if not s.startswith("{"):
                    return "bio"
            try:
                obj = json.loads(s)
            except json.JSONDecodeError:
                if not json_lines:
                    return "cmeee-array" if s == "{" else "cmeee"  # a pretty-printed object: let it report
                return "cmeee"
            json_lines += 1
            if isinstance(obj, dict) and "label" in obj:
                return "cluener"
            first = (obj.get("entities") or [None])[0] if isinstance(obj, dict) else None
            if isinstance(first, dict):
                return "spans" if "start" in first and "start_idx" not in first else "cmeee"
            if json_lines >= look:
                break
    return "cmeee" if json_lines else "bio"  # an empty file: nothing to read either way


def read_ner(paths: Iterable[str | Path], report: ReadReport, *, format: str = "auto",
             root: str | Path | None = None) -> Iterator[NerRecord]:
    """Records of every file (globs expanded under ``root``) in the given or detected format."""
    if format not in NER_FORMATS:
        raise ValueError(f"unknown NER format {format!r}; choose from {', '.join(NER_FORMATS)}")
    for path in expand_paths(paths, root=root):
        detected = detect_format(path) if format in ("auto", "cmeee") else None  # cmeee: lines or an array
        fmt = detected if format == "auto" else format
        if fmt in ("bio", "bioes"):
            yield from read_bio(path, report)
        elif fmt == "cmeee-array" or (fmt == "cmeee" and detected == "cmeee-array"):
            yield from read_json_array(path, report, format="cmeee")
        else:
            yield from read_json_lines(path, report, format=fmt)


# --------------------------------------------------------------------------------------------
# Alignment to token windows
# --------------------------------------------------------------------------------------------


@dataclass
class AlignStats:
    """Counts of what became a training target and what could not (see the module docstring)."""

    records: int = 0
    entities: int = 0
    per_type: Counter = field(default_factory=Counter)
    windows: int = 0
    long_texts: int = 0  # texts cut into more than one window
    misaligned: int = 0
    window_cut: int = 0  # (entity, window) pairs where the window holds only part of the entity
    lost: int = 0  # entities no window holds whole
    unknown_label: int = 0
    duplicates: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, record: NerRecord, span: Span) -> None:
        kept = self.examples.setdefault(kind, [])
        if len(kept) < EXAMPLES_KEPT:
            kept.append(f"{record.where}: {span.label} {record.text[span.start:span.end]!r} "
                        f"[{span.start}, {span.end})")

    def to_dict(self) -> dict:
        return {"records": self.records, "entities": self.entities, "per_type": dict(sorted(self.per_type.items())),
                "windows": self.windows, "long_texts": self.long_texts, "misaligned": self.misaligned,
                "window_cut": self.window_cut, "lost": self.lost, "unknown_label": self.unknown_label,
                "duplicates": self.duplicates, "examples": self.examples}

    def log(self, name: str) -> None:
        log.info("%s: %d records, %d entities, %d windows (%d texts longer than one window)", name,
                 self.records, self.entities, self.windows, self.long_texts)
        problems = {"misaligned": "entities with a boundary inside a token (not targets)",
                    "lost": "entities that no window holds whole (not targets)",
                    "window_cut": "(entity, window) pairs where the window's edge cuts the entity (not a target "
                                  "in that window)",
                    "unknown_label": "entities of a type that is not among the labels",
                    "duplicates": "entities listed twice in one record (kept once)"}
        for kind, what in problems.items():
            n = getattr(self, kind)
            if n:
                shown = "; ".join(self.examples.get(kind, [])[:5])
                log.warning("%s: %d %s%s", name, n, what, f", e.g. {shown}" if shown else "")


@dataclass(frozen=True)
class NerExample:
    """One window: token ids and its target spans ``(type, i, j)``, inclusive token indices."""

    ids: np.ndarray  # (n,) int64, [CLS] ... [SEP]
    spans: np.ndarray  # (K, 3) int64

    def __len__(self) -> int:
        return len(self.ids)


def _content_offsets(windows: Sequence[Window]) -> np.ndarray:
    """Offsets (n, 2) of the whole text's tokens (no specials), rebuilt from its windows."""
    n = windows[-1].token_start + len(windows[-1]) - 2
    whole = np.zeros((n, 2), dtype=np.int64)
    for w in windows:
        whole[w.token_start: w.token_start + len(w) - 2] = w.offsets[1:-1]
    return whole


def align_record(record: NerRecord, tokenizer: Tokenizer, label_index: dict[str, int], *, max_length: int,
                 stride: int, stats: AlignStats) -> list[NerExample]:
    """The record's windows with their targets; every entity that cannot be a target is counted."""
    windows = tokenizer.encode_windows(record.text, max_length=max_length, stride=stride)
    stats.records += 1
    stats.windows += len(windows)
    stats.long_texts += len(windows) > 1
    stats.entities += len(record.spans)
    stats.duplicates += record.duplicates
    stats.per_type.update(s.label for s in record.spans)
    known = []
    for s in record.spans:
        if s.label in label_index:
            known.append(s)
        else:
            stats.unknown_label += 1
            stats.note("unknown_label", record, s)
    chars = np.array([[s.start, s.end] for s in known], dtype=np.int64).reshape(-1, 2)
    tok = char_spans_to_token_spans(_content_offsets(windows), chars)  # (K, 2) whole-text token spans
    aligned = tok[:, 0] >= 0
    for s, ok in zip(known, aligned):
        if not ok:
            stats.misaligned += 1
            stats.note("misaligned", record, s)
    types = np.array([label_index[s.label] for s in known], dtype=np.int64)
    held = np.zeros(len(known), dtype=bool)
    examples = []
    for w in windows:
        lo, hi = w.token_start, w.token_start + len(w) - 2  # content tokens [lo, hi) of the whole text
        inside = aligned & (tok[:, 0] >= lo) & (tok[:, 1] < hi)
        cut = aligned & ~inside & (tok[:, 0] < hi) & (tok[:, 1] >= lo)
        stats.window_cut += int(cut.sum())
        for k in np.flatnonzero(cut):
            stats.note("window_cut", record, known[k])
        held |= inside
        local = tok[inside] - lo + 1  # +1: [CLS] first
        spans = np.concatenate([types[inside, None], local], axis=1) if inside.any() else np.zeros((0, 3), np.int64)
        examples.append(NerExample(ids=w.ids, spans=spans.astype(np.int64)))
    for k in np.flatnonzero(aligned & ~held):
        stats.lost += 1
        stats.note("lost", record, known[k])
    return examples


def align_records(records: Sequence[NerRecord], tokenizer: Tokenizer, labels: Sequence[str], *,
                  max_length: int, stride: int) -> tuple[list[NerExample], AlignStats]:
    """All windows of all records, and the counts."""
    stats = AlignStats()
    index = {label: c for c, label in enumerate(labels)}
    examples = [ex for r in records
                for ex in align_record(r, tokenizer, index, max_length=max_length, stride=stride, stats=stats)]
    return examples, stats


def labels_of(records: Iterable[NerRecord]) -> tuple[str, ...]:
    return tuple(sorted({s.label for r in records for s in r.spans}))
