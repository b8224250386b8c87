"""The input of a scoring run: physical lines with byte offsets -> records (JSON lines, CSV, TSV, plain
text), each holding its value or the error that makes it an error line.

Read top to bottom: a record's errors -> :class:`Record` -> lines of a binary stream -> text checks ->
CSV/TSV columns -> Parquet rows -> :class:`Source`, the input and its records.

Parquet input (pyarrow: ``pip install 'ropenlp[parquet]'``): one record per row, fields are columns (a
missing column is a usage error, a null or non-string text an ``invalid_request`` error line); its
``line`` is the 1-based row number and its position the row count (a resumed run starts at that row).

Error types of a record: ``invalid_utf8``, ``invalid_json``, ``invalid_record`` (not an object, CSV
syntax), ``empty_line``, ``missing_field``, ``line_too_long`` (a line over
``max(4 MiB, 16 x max_chars)`` bytes; skipped without being held in memory), and core's own:
``empty_input`` (empty or blank text), ``invalid_request`` (a field that is not a string, invalid
Unicode), ``text_too_long`` (over ``max_chars``). Scoring adds ``too_many_entities`` and
``inference_error`` (:mod:`service.score.run`).

``line`` is the 1-based line of the input where a record starts (a CSV header is line 1). Every record
carries the byte offset and line count just after it: a checkpoint records them, and a resumed run
seeks there instead of reading the input again.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from service.jobs import Limits
from service.validate import check_text
from service.errors import EmptyInput, ServiceError
from service.score.errors import InputOutputError, UsageError
from service.score.options import Plan, ScoreOptions

HEAD_BYTES = 64 * 1024  # the input's first bytes hashed into its identity (the resume fingerprint)

# --------------------------------------------------------------------------------------------
# Records and their errors
# --------------------------------------------------------------------------------------------


class InvalidUtf8(ServiceError):
    error_type = "invalid_utf8"


class InvalidJson(ServiceError):
    error_type = "invalid_json"


class InvalidRecord(ServiceError):
    error_type = "invalid_record"


class EmptyLine(ServiceError):
    error_type = "empty_line"


class MissingField(ServiceError):
    error_type = "missing_field"


class LineTooLong(ServiceError):
    error_type = "line_too_long"


@dataclass(slots=True, eq=False)
class Record:
    """One input record (one line; a CSV record may span lines) and, once scored, its result."""

    line: int  # 1-based line where it starts
    end: int  # byte offset just after it
    end_line: int  # lines read through it
    id: Any = None
    value: Any = None  # str, or (a, b) for similarity
    error: ServiceError | None = None
    result: dict[str, Any] | None = None
    vector: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Lines and texts
# --------------------------------------------------------------------------------------------


class _Lines:
    """Physical lines of a binary stream, newline (and a CR before it) stripped, with the offset and
    line count after each. A line over ``max_bytes`` is skipped in 1 MiB reads, never held whole."""

    def __init__(self, stream: BinaryIO, *, max_bytes: int) -> None:
        self._f, self.offset, self.line, self._max = stream, 0, 0, max_bytes

    def next(self) -> bytes | LineTooLong | None:
        """The next line's bytes; a :class:`LineTooLong` error for a line too long; None at the end."""
        raw = self._f.readline(self._max + 1)
        if not raw:
            return None
        n = len(raw)
        if n > self._max and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = self._f.readline(1 << 20)
                n += len(raw)
            self.offset += n
            self.line += 1
            return LineTooLong(f"line longer than {self._max} bytes: skipped", limit=self._max)
        self.offset += n
        self.line += 1
        content = raw[:-1] if raw.endswith(b"\n") else raw
        if content.endswith(b"\r"):
            content = content[:-1]
        if self.line == 1 and content.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            content = content[3:]
        return content


def _decode(content: bytes) -> str | InvalidUtf8:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        return InvalidUtf8(f"line is not valid UTF-8 ({e.reason} at byte {e.start})")


def _text(value: object, name: str, limits: Limits) -> str:
    """Core's text checks (a string, valid Unicode, at most max_chars), then: not empty or blank."""
    text = check_text(value, name, limits)
    if not text.strip():
        raise EmptyInput(f"{name} is empty", field=name)
    return text


def _json_fields(text: str) -> Callable[[str], object]:
    """The fields of a JSON-lines record: ``get(name)``, :class:`MissingField` when it has none."""
    if not text.strip():
        raise EmptyLine("empty line: expected a JSON object")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidJson(f"invalid JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(obj, dict):
        raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")

    def get(name: str) -> object:
        if name not in obj:
            raise MissingField(f"no field {name!r}", field=name)
        return obj[name]

    return get


def _line_fields(text: str) -> Callable[[str], object]:
    """The fields of a plain-text record: the line is its one field."""
    return lambda name: text


# --------------------------------------------------------------------------------------------
# CSV / TSV columns
# --------------------------------------------------------------------------------------------


class _Columns:
    """Where each wanted field is in a CSV/TSV row (by header name, or by index), and the name it is
    reported under."""

    def __init__(self, plan: Plan, header: list[str] | None) -> None:
        def locate(name: str) -> tuple[int, str]:
            if header is None:
                return int(name), f"column {name}"
            if name in header:
                return header.index(name), name
            if name.isdigit() and int(name) < len(header):
                return int(name), header[int(name)]
            raise UsageError(f"no column {name!r} in the header ({', '.join(map(repr, header))})")

        wanted = [*plan.fields, *([plan.id_field] if plan.id_field is not None else [])]
        self.where = {name: locate(name) for name in wanted}

    def shown(self, name: str) -> str:
        return self.where[name][1]

    def fields(self, row: list[str]) -> Callable[[str], object]:
        def get(name: str) -> str:
            k, shown = self.where[name]
            if k >= len(row):
                raise MissingField(f"no {shown!r}: the row has {len(row)} column(s)", field=shown)
            return row[k]

        return get


# --------------------------------------------------------------------------------------------
# Parquet rows
# --------------------------------------------------------------------------------------------


def pyarrow_module():
    """``pyarrow`` (and its ``parquet``), or a :class:`UsageError` saying which extra brings it."""
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("Parquet needs pyarrow: pip install 'ropenlp[parquet]' (or 'ropenlp[ray]')") from None
    return pa


def _plain(value: object) -> object:
    """An id as JSON can hold it (a Parquet date, decimal, bytes ... as its text)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


class _ParquetRows:
    """The rows of a Parquet file (the wanted columns, as dicts), from row ``start`` on: only the row
    groups from the one holding ``start`` are read, a batch at a time."""

    def __init__(self, path: str, columns: list[str], start: int = 0) -> None:
        pa = pyarrow_module()
        try:
            self._file = pa.parquet.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise InputOutputError(f"cannot read the Parquet input {path}: {e}") from None
        names = self._file.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise UsageError(f"no column {missing[0]!r} in {path} (has: {', '.join(map(repr, names))})")
        self.columns, self.start = list(dict.fromkeys(columns)), start
        self.num_rows = self._file.metadata.num_rows

    def rows(self) -> Iterator[dict[str, Any]]:
        meta, first, skip = self._file.metadata, 0, self.start
        while first < meta.num_row_groups and skip >= meta.row_group(first).num_rows:
            skip -= meta.row_group(first).num_rows
            first += 1
        groups = list(range(first, meta.num_row_groups))
        if not groups:
            return
        for batch in self._file.iter_batches(batch_size=4096, row_groups=groups, columns=self.columns):
            rows = batch.to_pylist()
            yield from rows[skip:]
            skip = max(0, skip - len(rows))


# --------------------------------------------------------------------------------------------
# The source: the input and its records
# --------------------------------------------------------------------------------------------


class Source:
    """The input file (or stdin) and the records in it, from the start or from a checkpoint."""

    def __init__(self, options: ScoreOptions, plan: Plan, limits: Limits) -> None:
        self.path, self.plan, self.limits = options.input, plan, limits
        self.max_bytes = max(4 << 20, 16 * limits.max_chars)
        self.pairs = len(plan.fields) == 2  # a record holds a pair of texts
        try:
            if self.path == "-":
                self._f: BinaryIO = sys.stdin.buffer
                self.size: int | None = None
                self.identity: dict[str, Any] = {"path": "-"}
            else:
                self._f = open(self.path, "rb")  # noqa: SIM115 (closed by close())
                st = os.fstat(self._f.fileno())
                regular = stat.S_ISREG(st.st_mode)
                self.size = st.st_size if regular else None
                head = hashlib.sha256(self._f.read(HEAD_BYTES) if regular else b"").hexdigest()
                if regular:
                    self._f.seek(0)
                self.identity = {
                    "path": str(Path(self.path).resolve()),
                    "size": st.st_size,
                    "mtime_ns": st.st_mtime_ns,
                    "head_sha256": head,
                }
        except OSError as e:
            raise InputOutputError(f"cannot read the input {self.path}: {e.strerror or e}") from None
        self._lines = _Lines(self._f, max_bytes=self.max_bytes)
        self._columns: _Columns | None = None
        self._csv_rows: Iterator[list[str]] | None = None
        self._row_error: ServiceError | None = None
        if plan.format == "parquet":  # the columns checked before anything runs
            try:
                _ParquetRows(self.path, [*plan.fields, *([plan.id_field] if plan.id_field else [])])
            except BaseException:
                self.close()
                raise
        if plan.format in ("csv", "tsv"):
            try:
                if plan.format == "csv":
                    self._csv_rows = self._csv_reader()
                self._columns = _Columns(plan, self._read_header() if plan.header else None)
            except BaseException:
                self.close()
                raise
        # where the records start (after a header): the first window of a `--ray` run
        self.data_start, self.data_line = self._lines.offset, self._lines.line
        # the name each field's errors are reported under
        self._shown = [self._columns.shown(f) for f in plan.fields] if self._columns else list(plan.fields)

    @property
    def seekable(self) -> bool:
        """A regular file: a resumed run seeks to its checkpoint instead of reading up to it."""
        return self.size is not None

    def close(self) -> None:
        if self._f is not sys.stdin.buffer:
            self._f.close()

    def records(self, start: tuple[int, int] | None = None) -> Iterator[Record]:
        """Records from the start, or from ``start`` = (byte offset, lines read) of a checkpoint."""
        if start is not None and start[0] > 0:
            if not self.seekable:
                raise ValueError("only a regular input file can be seeked")
            try:
                self._f.seek(start[0])
            except OSError as e:
                raise InputOutputError(f"cannot seek in the input {self.path}: {e.strerror or e}") from None
            self._lines.offset, self._lines.line = start
        if self.plan.format == "parquet":
            yield from self._parquet_records(start[0] if start is not None else 0)
            return
        if self.plan.format == "jsonl":
            read, fields = self._next_text, _json_fields
        elif self.plan.format == "text":
            read, fields = self._next_text, _line_fields
        else:
            read, fields = self._next_row, self._columns.fields
        while True:
            line = self._lines.line + 1
            got = read()
            if got is None:
                return
            rec = Record(line, self._lines.offset, self._lines.line)
            if isinstance(got, ServiceError):
                rec.error = got
            else:
                self._fill(rec, fields, got)
            yield rec

    def _parquet_records(self, start: int) -> Iterator[Record]:
        wanted = [*self.plan.fields, *([self.plan.id_field] if self.plan.id_field is not None else [])]
        for k, row in enumerate(_ParquetRows(self.path, wanted, start).rows(), start=start + 1):
            rec = Record(k, k, k)
            self._fill(rec, lambda r: r.__getitem__, row)
            if rec.id is not None:
                rec.id = _plain(rec.id)
            yield rec

    def _fill(self, rec: Record, fields: Callable[[Any], Callable[[str], object]], content: Any) -> None:
        """The record's id and value (one text, or a pair), or the first error that makes it an error line."""
        try:
            get = fields(content)
            if self.plan.id_field is not None:
                rec.id = get(self.plan.id_field)
            texts = tuple(
                _text(get(f), shown, self.limits) for f, shown in zip(self.plan.fields, self._shown)
            )
            rec.value = texts if self.pairs else texts[0]
        except ServiceError as e:
            rec.error = e

    # -- lines -> texts and rows ----------------------------------------------------------------

    def _next_line(self) -> bytes | LineTooLong | None:
        try:
            return self._lines.next()
        except OSError as e:
            raise InputOutputError(f"cannot read the input {self.path}: {e.strerror or e}") from None

    def _next_text(self) -> str | ServiceError | None:
        """The next line, decoded; an error for a line too long or not UTF-8; None at the end."""
        got = self._next_line()
        return _decode(got) if isinstance(got, bytes) else got

    def _csv_reader(self) -> Iterator[list[str]]:
        """``csv.reader`` over decoded lines; a bad line (UTF-8, too long) marks its record bad."""

        def feed() -> Iterator[str]:
            while (got := self._next_line()) is not None:
                if isinstance(got, LineTooLong):
                    self._row_error = self._row_error or got
                    yield "\n"
                    continue
                text = _decode(got)
                if isinstance(text, InvalidUtf8):
                    self._row_error = self._row_error or text
                    text = got.decode("utf-8", "replace")
                yield text + "\n"

        csv.field_size_limit(self.max_bytes)
        return csv.reader(feed(), strict=True)

    def _next_row(self) -> list[str] | ServiceError | None:
        """One CSV/TSV row, an error for a bad one, None at the end."""
        if self._csv_rows is not None:
            self._row_error = None
            try:
                row = next(self._csv_rows)
            except StopIteration:
                return None
            except csv.Error as e:
                return InvalidRecord(f"CSV: {e}")
            return self._row_error or (row if row else EmptyLine("empty line"))
        text = self._next_text()
        if text is None or isinstance(text, ServiceError):
            return text
        return text.split("\t") if text else EmptyLine("empty line")

    def _read_header(self) -> list[str]:
        row = self._next_row()
        if row is None:
            raise UsageError(f"{self.path} is empty: expected a header line (or pass --no-header)")
        if isinstance(row, ServiceError):
            raise UsageError(f"{self.path}: cannot read the header line: {row}")
        return row
