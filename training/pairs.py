"""Sentence-pair readers (torch-free): TSV and JSON lines, labels 0/1 or 0-5 (any number).

Every reader records what it saw in a :class:`training.data.ReadReport`; a line it cannot use
(too few columns, a label that is not a finite number, an empty sentence, bad JSON) is an error
naming file and line. A TSV header is recognised on line 1 only: with ``header = "auto"`` a first
line whose label cell is not a number is taken as the header (counted with the empty lines).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
    name: str = ""  # dev: the name its scores are reported under ("" = the file path)

    def __post_init__(self):
        if not self.paths:
            raise ValueError("a pair source needs at least one path")
        if min(self.columns) < 0 or len(set(self.columns)) != 3:
            raise ValueError(f"columns must be three distinct column numbers, got {self.columns}")


def _label(value: object) -> float:
    if isinstance(value, bool):
        raise TypeError(f"label {value!r} is not a number")
    x = float(value)  # numbers and numeric strings; raises ValueError / TypeError otherwise
    if not math.isfinite(x):
        raise ValueError(f"label {value!r} is not finite")
    return x


def _check(a: object, b: object) -> str | None:
    for which, s in (("first", a), ("second", b)):
        if not isinstance(s, str):
            return f"the {which} sentence is {type(s).__name__}, expected a string"
        if not s.strip():
            return f"the {which} sentence is empty"
    return None


def read_tsv_pairs(path: str | Path, report: ReadReport, *, columns: tuple[int, int, int] = (0, 1, 2),
                   header: bool | str = "auto") -> Iterator[PairRecord]:
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
            label = _label(cells[cl].strip())
        except (TypeError, ValueError):
            if n == 1 and header == "auto":
                log.info("%s: line 1 taken as a header (%r is not a label)", path, cells[cl])
                report.empty += 1
                continue
            report.error(path, n, f"label {cells[cl]!r} (column {cl}) is not a number")
            continue
        a, b = cells[ca].strip(), cells[cb].strip()
        problem = _check(a, b)
        if problem:
            report.error(path, n, problem)
            continue
        report.records += 1
        yield PairRecord(a, b, label, str(path), n)


def read_jsonl_pairs(path: str | Path, report: ReadReport, *,
                     fields: tuple[str, str, str] = ("sentence1", "sentence2", "label")) -> Iterator[PairRecord]:
    fa, fb, fl = fields
    for n, obj in json_objects(path, report):
        missing = [f for f in fields if f not in obj]
        if missing:
            report.error(path, n, f"missing field(s) {missing} (keys: {', '.join(sorted(obj)) or 'none'})")
            continue
        try:
            label = _label(obj[fl])
        except (TypeError, ValueError):
            report.error(path, n, f"label {obj[fl]!r} (field {fl!r}) is not a number")
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
        return read_jsonl_pairs(path, report, fields=source.fields)
    return read_tsv_pairs(path, report, columns=source.columns, header=source.header)


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
