"""Sentence-pair readers (torch-free): TSV and JSON lines, labels 0/1 or 0-5 (any number), or words
mapped to numbers (NLI: ``labels = {entailment = 2, neutral = 1, contradiction = 0}``); and the
de-duplication of pair sets read together.

Every reader records what it saw in a :class:`training.data.ReadReport`; a line it cannot use
(too few columns, a label that is not a finite number or not in the source's label map, an empty
sentence, bad JSON) is an error naming file and line. A TSV header is recognised on line 1 only:
with ``header = "auto"`` a first line whose label cell is not a label is taken as the header
(counted with the empty lines).

De-duplication (:func:`deduplicate`): a pair is the *unordered* couple of its sentences with all
whitespace removed; a pair already seen in an earlier-listed set (or in a dev set) is dropped from
a later one, and the drops are counted per set. Repeats inside one set are the source's own and kept.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.data import ReadReport, content_lines, expand_paths, json_objects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PairRecord:
    a: str
    b: str
    label: float
    path: str
    line: int


@dataclass(frozen=True)
class PairSource:
    """``[[data.train]]`` / ``[[data.dev]]``: pair files (globs) and how to read them."""

    paths: tuple[str, ...]
    format: Literal["auto", "tsv", "jsonl"] = "auto"  # auto: .jsonl/.json -> jsonl, else tsv
    header: bool | Literal["auto"] = "auto"  # tsv: skip line 1 (auto: when its label is not a number)
    columns: tuple[int, int, int] = (0, 1, 2)  # tsv: sentence 1, sentence 2, label (0-based)
    fields: tuple[str, str, str] = ("sentence1", "sentence2", "label")  # jsonl keys
    name: str = ""  # the name its counts and scores are reported under ("" = the file path)
    labels: dict[str, float] = field(default_factory=dict)  # label word -> number ({} = labels are numbers)
    weight: float = 1.0  # train: sampling weight in the mixture (training.similarity.MixtureBatches)
    objective: Literal["", "cosent", "simcse"] = ""  # train: the loss of its batches ("" = sim.objective)

    def __post_init__(self):
        if not self.paths:
            raise ValueError("a pair source needs at least one path")
        if min(self.columns) < 0 or len(set(self.columns)) != 3:
            raise ValueError(f"columns must be three distinct column numbers, got {self.columns}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be a finite number >= 0, got {self.weight}")
        for word, value in self.labels.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"labels.{word} must be a finite number, got {value!r}")


def _label(value: object, labels: Mapping[str, float] | None = None) -> float:
    """The number of a label cell: looked up in ``labels`` when the source has a label map (a value
    not in it raises KeyError), else the cell as a finite number."""
    if labels:
        if not isinstance(value, str) or value.strip() not in labels:
            raise KeyError(value)
        return float(labels[value.strip()])
    if isinstance(value, bool):
        raise TypeError(f"label {value!r} is not a number")
    x = float(value)  # numbers and numeric strings; raises ValueError / TypeError otherwise
    if not math.isfinite(x):
        raise ValueError(f"label {value!r} is not finite")
    return x


def _label_problem(value: object, labels: Mapping[str, float] | None, where: str) -> str:
    if labels:
        return f"label {value!r} ({where}) is not in the label map ({', '.join(labels)})"
    return f"label {value!r} ({where}) is not a number"


def _check(a: object, b: object) -> str | None:
    for which, s in (("first", a), ("second", b)):
        if not isinstance(s, str):
            return f"the {which} sentence is {type(s).__name__}, expected a string"
        if not s.strip():
            return f"the {which} sentence is empty"
    return None


def read_tsv_pairs(path: str | Path, report: ReadReport, *, columns: tuple[int, int, int] = (0, 1, 2),
                   header: bool | str = "auto", labels: Mapping[str, float] | None = None) -> Iterator[PairRecord]:
    ca, cb, cl = columns
    need = max(columns) + 1
    for n, line in content_lines(path, report):
        cells = line.split("\t")
        if n == 1 and header is True:
            report.empty += 1
            continue
        if len(cells) < need:
            report.error(path, n, f"{len(cells)} tab-separated column(s), expected at least {need} "
                                  f"(sentence 1, sentence 2, label in columns {list(columns)})")
            continue
        try:
            label = _label(cells[cl].strip(), labels)
        except (TypeError, ValueError, KeyError):
            if n == 1 and header == "auto":
                log.info("%s: line 1 taken as a header (%r is not a label)", path, cells[cl])
                report.empty += 1
                continue
            report.error(path, n, _label_problem(cells[cl], labels, f"column {cl}"))
            continue
        a, b = cells[ca].strip(), cells[cb].strip()
        problem = _check(a, b)
        if problem:
            report.error(path, n, problem)
            continue
        report.records += 1
        yield PairRecord(a, b, label, str(path), n)


def read_jsonl_pairs(path: str | Path, report: ReadReport, *,
                     fields: tuple[str, str, str] = ("sentence1", "sentence2", "label"),
                     labels: Mapping[str, float] | None = None) -> Iterator[PairRecord]:
    fa, fb, fl = fields
    for n, obj in json_objects(path, report):
        missing = [f for f in fields if f not in obj]
        if missing:
            report.error(path, n, f"missing field(s) {missing} (keys: {', '.join(sorted(obj)) or 'none'})")
            continue
        try:
            label = _label(obj[fl], labels)
        except (TypeError, ValueError, KeyError):
            report.error(path, n, _label_problem(obj[fl], labels, f"field {fl!r}"))
            continue
        problem = _check(obj[fa], obj[fb])
        if problem:
            report.error(path, n, problem)
            continue
        report.records += 1
        yield PairRecord(obj[fa].strip(), obj[fb].strip(), label, str(path), n)


def pair_format(path: str | Path, format: str = "auto") -> str:
    if format != "auto":
        return format
    return "jsonl" if Path(path).suffix.lower() in (".jsonl", ".json") else "tsv"


def read_pair_file(path: str | Path, report: ReadReport, source: PairSource) -> Iterator[PairRecord]:
    if pair_format(path, source.format) == "jsonl":
        return read_jsonl_pairs(path, report, fields=source.fields, labels=source.labels)
    return read_tsv_pairs(path, report, columns=source.columns, header=source.header, labels=source.labels)


def source_files(source: PairSource, *, root: str | Path | None = None) -> list[tuple[str, Path]]:
    """``(name, path)`` per file of a source: the source's name (suffixed when it has several files) or
    the path as configured."""
    files = expand_paths(source.paths, root=root)
    out = []
    for p in files:
        if source.name:
            name = source.name if len(files) == 1 else f"{source.name}/{p.name}"
        else:
            name = str(p.relative_to(root)) if root is not None and p.is_relative_to(Path(root)) else str(p)
        out.append((name, p))
    return out


def read_pairs(sources: Iterable[PairSource], report: ReadReport, *,
               root: str | Path | None = None) -> Iterator[PairRecord]:
    for source in sources:
        for _, path in source_files(source, root=root):
            yield from read_pair_file(path, report, source)


# --------------------------------------------------------------------------------------------
# De-duplication across pair sets
# --------------------------------------------------------------------------------------------


def pair_key(a: str, b: str) -> tuple[str, str]:
    """The identity of a pair: its two sentences without any whitespace, in sorted order."""
    x, y = "".join(a.split()), "".join(b.split())
    return (x, y) if x <= y else (y, x)


@dataclass
class DedupCounts:
    read: int
    kept: int
    dropped: int  # pairs already in an earlier-listed set
    dropped_dev: int  # pairs of a dev set
    dropped_by: dict[str, int]  # the earlier set (or "dev") each dropped pair was found in

    def to_dict(self) -> dict:
        return {"read": self.read, "kept": self.kept, "dropped": self.dropped, "dropped_dev": self.dropped_dev,
                "dropped_by": self.dropped_by}


def deduplicate(sets: Mapping[str, Sequence[PairRecord]], *, dev: Iterable[PairRecord] = ()
                ) -> tuple[dict[str, list[PairRecord]], dict[str, DedupCounts]]:
    """Each set without the pairs (:func:`pair_key`) of the sets listed before it and of ``dev``, in order;
    and the counts per set. Repeats within one set are kept (they are the source's)."""
    owner: dict[tuple[str, str], str] = {pair_key(p.a, p.b): "dev" for p in dev}
    out: dict[str, list[PairRecord]] = {}
    counts: dict[str, DedupCounts] = {}
    for name, recs in sets.items():
        kept, by = [], {}
        for p in recs:
            key = pair_key(p.a, p.b)
            first = owner.get(key)
            if first is not None and first != name:
                by[first] = by.get(first, 0) + 1
                continue
            kept.append(p)
        for p in kept:
            owner.setdefault(pair_key(p.a, p.b), name)
        out[name] = kept
        dev_n = by.get("dev", 0)
        counts[name] = DedupCounts(read=len(recs), kept=len(kept), dropped=len(recs) - len(kept) - dev_n,
                                   dropped_dev=dev_n, dropped_by=by)
    return out, counts


# --------------------------------------------------------------------------------------------
# Word-order negatives (PAWS-style): a positive pair with two of its nouns swapped is not a paraphrase
# --------------------------------------------------------------------------------------------

def set_rng(seed: int, name: str):
    """A numpy generator for one named pair set: its draws depend on ``(seed, name)`` only, whatever other sets
    are read or in which order (a per-set sample, per-set negatives)."""
    import zlib

    import numpy as np

    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


NOUN_TAGS = ("n", "nr", "ns", "nt", "nz", "nrt", "nrfg", "eng")  # jieba's POS tags of names and nouns


def swap_nouns(text: str, rng, segment) -> str | None:
    """``text`` with two different nouns (``segment``: text -> [(word, jieba POS tag)]; tags in
    :data:`NOUN_TAGS`) swapped, the two chosen by ``rng``; None when it has fewer than two different nouns."""
    words = segment(text)
    nouns = [i for i, (w, tag) in enumerate(words) if tag in NOUN_TAGS and w.strip()]
    pairs = [(i, j) for k, i in enumerate(nouns) for j in nouns[k + 1:] if words[i][0] != words[j][0]]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    out = [w for w, _ in words]
    out[i], out[j] = out[j], out[i]
    return "".join(out)


def _noun_segmenter():
    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    return lambda text: [(p.word, p.flag) for p in jieba.posseg.cut(text)]


def swap_negatives(recs: Sequence[PairRecord], fraction: float, *, seed: int, name: str,
                   segment=None) -> list[PairRecord]:
    """PAWS-style word-order negatives of a pair set: for a seeded ``fraction`` of its positive pairs
    (the set's highest label), ``(a, b with two of its nouns swapped)`` labelled with the set's lowest
    label (pairs whose ``b`` has fewer than two different nouns give none). The draw depends on
    ``(seed, name)`` and the records only. A pooled bi-encoder hardly sees word order; these teach it that
    the same words in another order can mean something else (PAWS-X's negatives are built that way)."""
    if not recs or fraction <= 0:
        return []
    top, low = max(p.label for p in recs), min(p.label for p in recs)
    if top == low:
        return []
    rng = set_rng(seed, name)
    segment = segment or _noun_segmenter()
    out = []
    for p in recs:
        if p.label == top and rng.random() < fraction:
            swapped = swap_nouns(p.b, rng, segment)
            if swapped is not None and swapped != p.b:
                out.append(PairRecord(p.a, swapped, low, p.path, p.line))
    return out


# --------------------------------------------------------------------------------------------
# Contrastive triples (supervised SimCSE): (premise, entailment, contradiction of the same premise)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Triple:
    anchor: str
    positive: str
    negative: str | None  # a hard negative of the same anchor, if the set has one


def contrastive_triples(recs: Sequence[PairRecord], *, positive_ratio: float = 0.8
                        ) -> tuple[list[Triple], dict[str, int]]:
    """Rows grouped by their first sentence (whitespace-insensitive): every positive row (label >=
    ``positive_ratio`` x the set's highest label: entailment of 0/1/2 NLI, 1 of 0/1) becomes
    (sentence 1, sentence 2, a negative of the same sentence 1), the negatives being the rows with the
    set's lowest label (contradiction, 0) when it is below the positives'. The k-th positive of an anchor
    takes its (k mod n)-th negative; an anchor without negatives gives triples without one. In file order."""
    if not recs:
        return [], {"triples": 0, "with_negative": 0, "anchors": 0}
    top, low = max(p.label for p in recs), min(p.label for p in recs)
    cut = positive_ratio * top if top > 0 else top
    negatives: dict[str, list[str]] = {}
    for p in recs:
        if p.label == low and low < cut:
            negatives.setdefault("".join(p.a.split()), []).append(p.b)
    out, seen = [], {}
    for p in recs:
        if p.label < cut:
            continue
        key = "".join(p.a.split())
        k = seen.get(key, 0)
        seen[key] = k + 1
        negs = negatives.get(key)
        out.append(Triple(p.a, p.b, negs[k % len(negs)] if negs else None))
    return out, {"triples": len(out), "with_negative": sum(t.negative is not None for t in out), "anchors": len(seen)}
