"""Data readers that never lose a record silently (torch-free).

Every reader takes a :class:`ReadReport` and records what it saw: lines per file, records yielded,
empty lines skipped, and one :class:`ReadError` (file, line number, reason) for every record it
could not parse. A caller then either raises (``report.check("raise")``: a :class:`DataError`
listing the bad records) or goes on and writes the report beside the run (``"skip"``).

Read top to bottom: records and the report -> path expansion -> numbered lines (the loop every
line-based reader shares: invalid UTF-8, blank lines and JSON objects reported the same way) ->
plain-text, JSONL-field and TSV-column readers (the texts of any file, for vocabularies and MLM) ->
text sources as config -> held-out split. The labelled readers (:mod:`training.ner_data`,
:mod:`training.pairs`) build on the same lines and report.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

OnError = Literal["raise", "skip"]


# --------------------------------------------------------------------------------------------
# Records and the report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextRecord:
    text: str
    path: str
    line: int  # 1-based line number in ``path``


@dataclass(frozen=True)
class ReadError:
    path: str
    line: int  # 1-based
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(ValueError):
    """Records that could not be read; the message lists the first ones as ``file:line: reason``."""

    SHOWN = 20

    def __init__(self, errors: Sequence[ReadError]):
        self.errors = list(errors)
        shown = "\n  ".join(str(e) for e in self.errors[: self.SHOWN])
        more = f"\n  ... and {len(self.errors) - self.SHOWN} more" if len(self.errors) > self.SHOWN else ""
        super().__init__(f"{len(self.errors)} record(s) could not be read:\n  {shown}{more}")


@dataclass
class ReadReport:
    """What the readers saw. ``lines == records + empty + len(errors)`` per reader call."""

    files: dict[str, int] = field(default_factory=dict)  # path -> lines read
    records: int = 0
    empty: int = 0  # blank lines / empty texts: skipped, counted
    errors: list[ReadError] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(self.files.values())

    def error(self, path: str | Path, line: int, reason: str) -> None:
        self.errors.append(ReadError(str(path), line, reason))

    def check(self, on_error: OnError = "raise") -> None:
        """Raise :class:`DataError` if any record failed (``"raise"``), else log each failure."""
        if not self.errors:
            return
        if on_error == "raise":
            raise DataError(self.errors)
        for e in self.errors[: DataError.SHOWN]:
            log.warning("skipped %s", e)
        log.warning("skipped %d unreadable record(s) in all (listed in the data report)", len(self.errors))

    def summary(self) -> str:
        return (f"{len(self.files)} file(s), {self.lines:,} lines: {self.records:,} records, "
                f"{self.empty:,} empty, {len(self.errors):,} unreadable")

    def to_dict(self) -> dict:
        return {"files": self.files, "lines": self.lines, "records": self.records, "empty": self.empty,
                "errors": [str(e) for e in self.errors]}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_dict())


def settle_reports(path: str | Path, on_error: OnError, **reports: ReadReport) -> None:
    """Write the named reports to ``path`` (one JSON object: every unreadable record, file:line, whatever
    ``on_error`` says), check each (:meth:`ReadReport.check`) and log what was read."""
    write_json(path, {name: r.to_dict() for name, r in reports.items()})
    for r in reports.values():
        r.check(on_error)
    log.info("%s", "; ".join(f"{name}: read {r.summary()}" for name, r in reports.items()))


def write_json(path: str | Path, data: object) -> None:
    """A small JSON file (reports, metrics): indented, UTF-8 as is, a final newline."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def expand_paths(patterns: Iterable[str | Path], *, root: str | Path | None = None) -> list[Path]:
    """Files matching the glob patterns, in pattern order (each pattern's matches sorted), no repeats.

    Relative patterns are taken under ``root`` (default: the current directory). A pattern that
    matches no file raises :class:`FileNotFoundError` naming it.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        p = Path(pattern).expanduser()
        if root is not None and not p.is_absolute():
            p = Path(root) / p
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        if not matches:
            raise FileNotFoundError(f"no file matches {str(p)!r}")
        for m in matches:
            if m.resolve() not in seen:
                seen.add(m.resolve())
                out.append(m)
    return out


# --------------------------------------------------------------------------------------------
# Lines: what every line-based reader does first
# --------------------------------------------------------------------------------------------


def numbered_lines(path: Path, report: ReadReport) -> Iterator[tuple[int, str | None]]:
    """(line number, text without the line ending) per line; None (and an error) for invalid UTF-8.

    Lines end at ``\\n`` only, so the numbers match ``wc -l`` / editors even when a line holds
    other Unicode line separators.
    """
    key = str(path)
    report.files.setdefault(key, 0)
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            report.files[key] += 1
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                report.error(path, n, f"invalid UTF-8 at byte {e.start}")
                yield n, None
                continue
            yield n, text.removeprefix("\ufeff") if n == 1 else text


def content_lines(path: str | Path, report: ReadReport) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line that holds something: lines of invalid UTF-8 are reported by
    :func:`numbered_lines`, blank ones counted as empty."""
    for n, line in numbered_lines(Path(path), report):
        if line is None:
            continue
        if not line.strip():
            report.empty += 1
            continue
        yield n, line


def json_objects(path: str | Path, report: ReadReport) -> Iterator[tuple[int, dict]]:
    """(line number, object) per line of a JSON-lines file; a line that is not a JSON object is an error."""
    for n, line in content_lines(path, report):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            report.error(path, n, f"invalid JSON: {e.msg} at column {e.colno}")
            continue
        if not isinstance(obj, dict):
            report.error(path, n, f"expected a JSON object, got {type(obj).__name__}")
            continue
        yield n, obj


# --------------------------------------------------------------------------------------------
# Text readers
# --------------------------------------------------------------------------------------------


def read_lines(path: str | Path, report: ReadReport) -> Iterator[TextRecord]:
    """One text per line (stripped); blank lines are counted as empty."""
    for n, text in content_lines(path, report):
        report.records += 1
        yield TextRecord(text.strip(), str(path), n)


def read_jsonl_texts(path: str | Path, report: ReadReport, *, field: str = "text") -> Iterator[TextRecord]:
    """The string ``field`` of each JSON object, one object per line (CLUENER, CMeEE)."""
    for n, obj in json_objects(path, report):
        if field not in obj:
            report.error(path, n, f"no {field!r} field (keys: {', '.join(sorted(obj)) or 'none'})")
            continue
        text = obj[field]
        if not isinstance(text, str):
            report.error(path, n, f"field {field!r} is {type(text).__name__}, expected a string")
            continue
        if not text.strip():
            report.empty += 1
            continue
        report.records += 1
        yield TextRecord(text.strip(), str(path), n)


def read_tsv_texts(path: str | Path, report: ReadReport, *,
                   columns: Sequence[int] = (0,)) -> Iterator[TextRecord]:
    """The given tab-separated columns of each line, each as its own record (STS-B, LCQMC pairs)."""
    need = max(columns) + 1
    for n, line in content_lines(path, report):
        cells = line.split("\t")
        if len(cells) < need:
            report.error(path, n, f"{len(cells)} tab-separated column(s), expected at least {need}")
            continue
        for c in columns:
            text = cells[c].strip()
            if not text:
                report.empty += 1
                continue
            report.records += 1
            yield TextRecord(text, str(path), n)


# --------------------------------------------------------------------------------------------
# Text sources (a config table) and the held-out split
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSource:
    """``[[data.sources]]``: files (globs) and how to take texts out of them."""

    paths: tuple[str, ...]
    format: Literal["lines", "jsonl", "tsv"] = "lines"
    field: str = "text"  # jsonl: the key holding the text
    columns: tuple[int, ...] = (0,)  # tsv: the columns holding texts (0-based)

    def __post_init__(self):
        if not self.paths:
            raise ValueError("a text source needs at least one path")
        if not self.columns or min(self.columns) < 0:
            raise ValueError(f"columns must be non-negative column numbers, got {self.columns}")


def read_source(source: TextSource, report: ReadReport, *,
                root: str | Path | None = None) -> Iterator[TextRecord]:
    for path in expand_paths(source.paths, root=root):
        if source.format == "lines":
            yield from read_lines(path, report)
        elif source.format == "jsonl":
            yield from read_jsonl_texts(path, report, field=source.field)
        else:
            yield from read_tsv_texts(path, report, columns=source.columns)


def read_texts(sources: Iterable[TextSource], report: ReadReport, *,
               root: str | Path | None = None) -> Iterator[TextRecord]:
    """All texts of all sources, in order (files in glob order, lines in file order)."""
    for source in sources:
        yield from read_source(source, report, root=root)


def is_heldout(text: str, fraction: float, *, salt: str = "") -> bool:
    """Deterministic split by content hash: the same text is always on the same side (no leaks
    through duplicates), whatever the file order; about ``fraction`` of distinct texts are held out."""
    if fraction <= 0:
        return False
    h = hashlib.blake2b((salt + text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(h, "big") < fraction * 2**64

