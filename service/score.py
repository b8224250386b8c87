"""Batch scoring of large files: ``ropenlp score ner|similarity|embed`` (the CLI shim is in ``service.cli``).

Read top to bottom: errors -> options -> input (lines with byte offsets -> records per format) ->
scoring one window (core's jobs and batching) -> output (JSONL, ``.npy``, the state file) ->
resume -> progress -> :func:`score`.

What it does, in one paragraph: records are read from the input as a stream, a window of ``window``
records at a time (memory is bounded by the window, never by the file). The valid records of a window
become ONE core job (``Engine.prepare_ner / prepare_pairs / prepare_embed``: the same tokenizer,
validation, NER windows over long texts, similarity truncation as the HTTP server) run by
``Engine.execute`` (length-sorted batches within the ``batch_tokens`` budget). The next window is read
and tokenized on a second thread while the model runs. Results are written in input order, one output
line per input record, error lines included.

Output (JSONL, one line per input record, in input order)::

    {"line": 7, "id": "a1", "entities": [{"start": 0, "end": 2, "label": "LOC", "text": "北京", "score": 3.1}]}
    {"line": 8, "id": "a2", "score": 0.83, "truncated": false}                   # similarity
    {"line": 9, "vector": [0.01, ...], "truncated": false}                         # embed
    {"line": 10, "row": 9, "truncated": false}                                     # embed with --npy
    {"line": 11, "id": "a4", "error": "no field 'text'", "error_type": "missing_field", "field": "text"}

``line`` is the 1-based line of the input where the record starts (a CSV header is line 1), ``id`` the
value of ``--id-field`` when given. ``truncated``: the text (or a text of the pair) was cut to the
model's ``max_length`` tokens (NER never truncates: long texts are windowed). ``--npy FILE`` writes
the vectors as a float32 ``.npy`` of shape (records, dim): row k is output line k (0-based, its
``row``), a row of NaN for an error line. It is written in chunks behind a fixed 128-byte header
whose shape is rewritten at every checkpoint, so an interrupted file is still a valid ``.npy`` of the
rows checkpointed so far (``np.load(path, mmap_mode="r")`` reads it without loading it).

Error types of a record: ``invalid_utf8``, ``invalid_json``, ``invalid_record`` (not an object, CSV
syntax), ``empty_line``, ``missing_field``, ``line_too_long`` (a line over
``max(4 MiB, 16 x max_chars)`` bytes; skipped without being held in memory), and core's own:
``empty_input`` (empty or blank text), ``invalid_request`` (a field that is not a string, invalid
Unicode), ``text_too_long`` (over ``max_chars``), ``too_many_entities``, ``inference_error``.

Durability (the fsync policy): after every window the whole lines of that window are written with
one ``write`` and flushed to the OS, so killing the process (even ``kill -9``) never loses a written
line; at most a torn last line, which ``--resume`` truncates. Every ``fsync_interval`` seconds (default
5; 0 = after every window) and at exit: the ``.npy`` and the output are fsync'ed, THEN a checkpoint
line is appended to the state file and fsync'ed, so a checkpoint never claims more than is on disk.

Resume (``--resume``): the state file ``OUTPUT.state`` (JSON lines) holds the run's fingerprint
(task, format, fields, threshold, ``--npy`` path, bundle manifest hash and precision, the engine
limits that change results, and the input's path, size, mtime and SHA-256 of its first 64 KiB) and
checkpoints (records and error lines written, output bytes, input byte offset and line after the last
record). On resume the fingerprint must match (else a clear refusal listing what changed); the output
is cut back to the last checkpoint plus every complete, parseable line after it (a torn or garbled
tail is truncated); each kept line after the checkpoint must name the input line the re-read input
gives for it; the input is seeked to the checkpoint's offset (stdin: re-read and skipped) and scoring
goes on. Windows are aligned to record numbers (multiples of ``window``), so a resumed run batches
exactly as an uninterrupted one and writes the same bytes. A completed run is marked in the state
file: resuming it again does nothing. Output ``-`` (stdout) cannot be resumed.

What may change on resume: ``--window``, ``--batch-tokens``, threads, ``--max-errors``, progress and
fsync flags (none changes a result beyond float rounding of differently padded batches).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

import numpy as np

from models.spans import Entity
from service.core import Engine, Limits, check_text
from service.errors import EmptyInput, InferenceError, ServiceError, TooManyEntities

log = logging.getLogger(__name__)

Task = Literal["ner", "similarity", "embed"]
Format = Literal["jsonl", "csv", "tsv", "text"]
EXTENSIONS: dict[str, Format] = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "text",
}  # fmt: skip
STATE_SUFFIX = ".state"
STATE_VERSION = 1
HEAD_BYTES = 64 * 1024  # the input's first bytes hashed into the fingerprint
NPY_HEADER = 128  # bytes; fixed, so the shape can be rewritten in place


# --------------------------------------------------------------------------------------------
# Errors: the run's (library raises, the CLI shim maps them to exit codes) and a record's
# --------------------------------------------------------------------------------------------


class ScoreError(Exception):
    """A run that cannot start or go on. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(ScoreError):
    """Options that do not fit together, a missing column, an output that exists (exit 2)."""


class ResumeError(UsageError):
    """``--resume`` refused: no state, other arguments or input, an output that does not match (exit 2)."""


class InputOutputError(ScoreError):
    """The input cannot be read or the output cannot be written (exit 3)."""

    exit_code = 3


class Stopped(ScoreError):
    """The run stopped before the end of the input; ``summary`` says how far it got (resumable)."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


class TooManyErrors(Stopped):
    """More error lines than ``--max-errors`` (exit 1)."""

    exit_code = 1


class Interrupted(Stopped):
    """Ctrl-C or SIGTERM: the lines written so far are checkpointed (exit 130)."""

    exit_code = 130


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


# --------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOptions:
    """One scoring run. Paths are ``"-"`` for stdin / stdout. Field names are JSON keys, CSV/TSV
    column names (files with a header) or 0-based column indices (``"2"``; files without one)."""

    task: Task
    input: str
    output: str
    format: Format | None = None  # None: from the input's extension
    text_field: str | None = None  # ner / embed; default "text" (column 0 without a header)
    a_field: str | None = None  # similarity; default "a" / "b" (columns 0 / 1 without a header)
    b_field: str | None = None
    id_field: str | None = None  # copied to every output line as "id"
    header: bool | None = None  # csv / tsv: first line names the columns (default True)
    threshold: float | None = None  # ner; default: the bundle's
    window: int = 4096  # records read, sorted by length and batched together
    max_errors: int | None = None  # stop (exit 1) once more error lines than this were written
    resume: bool = False
    overwrite: bool = False
    npy: str | None = None  # embed: vectors also as a float32 .npy
    vectors: bool | None = None  # embed: vectors in the JSONL lines (default: unless --npy)
    fsync_interval: float = 5.0  # seconds between checkpoints (0: after every window)

    @property
    def state_path(self) -> Path:
        return Path(self.output + STATE_SUFFIX)

    @property
    def streamed(self) -> bool:
        """Output to stdout or to a non-regular file (a pipe, /dev/null): no state file, no resume."""
        return self.output == "-" or (os.path.exists(self.output) and not os.path.isfile(self.output))


@dataclass(frozen=True)
class _Plan:
    """Options checked and completed: the format, the fields to read, what each line carries."""

    format: Format
    fields: tuple[str, ...]  # ("text",) or ("a", "b") as the user named them
    id_field: str | None
    header: bool
    vectors: bool


def _plan(o: ScoreOptions, engine: Engine) -> _Plan:
    if o.window < 1:
        raise UsageError(f"--window must be >= 1, got {o.window}")
    if o.max_errors is not None and o.max_errors < 0:
        raise UsageError(f"--max-errors must be >= 0, got {o.max_errors}")
    if not (o.fsync_interval >= 0 and math.isfinite(o.fsync_interval)):
        raise UsageError(f"--fsync-interval must be a number of seconds >= 0, got {o.fsync_interval}")
    if o.streamed and o.resume:
        raise ResumeError(
            f"--resume needs a regular output file: {'stdout' if o.output == '-' else o.output} cannot be "
            "resumed (give --output FILE)"
        )
    if o.resume and o.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pick one")
    if o.task != "embed" and (o.npy is not None or o.vectors is not None):
        raise UsageError("--npy and --vectors are for `score embed`")
    if o.threshold is not None and o.task != "ner":
        raise UsageError("--threshold is for `score ner`")
    if o.threshold is not None:
        lo, hi = engine.limits.threshold_min, engine.limits.threshold_max
        if not (math.isfinite(o.threshold) and lo <= o.threshold <= hi):
            raise UsageError(
                f"--threshold {o.threshold} is outside [{lo}, {hi}] (the threshold_min/max settings)"
            )
    engine_task = "similarity" if o.task != "ner" else "ner"
    if engine_task not in engine.tasks:
        raise UsageError(
            f"the bundle {engine.manifest.name!r} has no {engine_task} model (has: {', '.join(engine.tasks)})"
        )
    fmt = o.format
    if fmt is None:
        if o.input == "-":
            raise UsageError("cannot tell the format of stdin: pass --format jsonl|csv|tsv|text")
        fmt = EXTENSIONS.get(Path(o.input).suffix.lower())
        if fmt is None:
            raise UsageError(
                f"cannot tell the format of {o.input} from its extension "
                f"(known: {', '.join(EXTENSIONS)}): pass --format jsonl|csv|tsv|text"
            )
    header = fmt in ("csv", "tsv") if o.header is None else o.header
    if o.header and fmt in ("jsonl", "text"):
        raise UsageError(f"--header is for csv / tsv input, not {fmt}")
    indexed = fmt in ("csv", "tsv") and not header  # fields are column indices
    if o.task == "similarity":
        if o.text_field is not None:
            raise UsageError("`score similarity` reads pairs: use --a-field / --b-field, not --text-field")
        if fmt == "text":
            raise UsageError("plain text holds one text per line: give pairs as tsv, csv or jsonl")
        fields = (o.a_field or ("0" if indexed else "a"), o.b_field or ("1" if indexed else "b"))
    else:
        if o.a_field is not None or o.b_field is not None:
            raise UsageError(f"`score {o.task}` reads one text per record: use --text-field")
        fields = (o.text_field or ("0" if indexed else "text"),)
    if fmt == "text" and (o.text_field is not None or o.id_field is not None):
        raise UsageError("plain text has no fields: each line is the text, its line number the id")
    if indexed:
        for f in (*fields, *([o.id_field] if o.id_field is not None else [])):
            if not f.isdigit():
                raise UsageError(f"without a header, columns are 0-based indices: got {f!r}")
    vectors = o.npy is None if o.vectors is None else o.vectors
    if o.task == "embed" and not vectors and o.npy is None:
        raise UsageError("--no-vectors without --npy would write no vectors at all")
    return _Plan(format=fmt, fields=fields, id_field=o.id_field, header=header, vectors=vectors)


# --------------------------------------------------------------------------------------------
# Input: physical lines with byte offsets -> records
# --------------------------------------------------------------------------------------------


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


class _Lines:
    """Physical lines of a binary stream, newline (and a CR before it) stripped, with the offset and
    line count after each. A line over ``max_bytes`` is skipped in 1 MiB reads, never held whole."""

    def __init__(self, stream: BinaryIO, *, offset: int = 0, line: int = 0, max_bytes: int) -> None:
        self._f, self.offset, self.line, self._max = stream, offset, line, max_bytes

    def next(self) -> tuple[bytes | None, bool] | None:
        """``(content, True)``; ``(None, False)`` for a line too long; None at the end of the input."""
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
            return None, False
        self.offset += n
        self.line += 1
        content = raw[:-1] if raw.endswith(b"\n") else raw
        if content.endswith(b"\r"):
            content = content[:-1]
        if self.line == 1 and content.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
            content = content[3:]
        return content, True


def _decode(content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidUtf8(f"line is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _too_long(max_bytes: int) -> LineTooLong:
    return LineTooLong(f"line longer than {max_bytes} bytes: skipped", limit=max_bytes)


def _text(value: object, name: str, limits: Limits) -> str:
    """Core's text checks (a string, valid Unicode, at most max_chars), then: not empty or blank."""
    text = check_text(value, name, limits)
    if not text.strip():
        raise EmptyInput(f"{name} is empty", field=name)
    return text


class _Columns:
    """Where each wanted field is in a CSV/TSV row: by header name, or by index."""

    def __init__(self, plan: _Plan, header: list[str] | None) -> None:
        def locate(name: str) -> tuple[int, str]:
            if header is None:
                return int(name), f"column {name}"
            if name in header:
                return header.index(name), name
            if name.isdigit() and int(name) < len(header):
                return int(name), header[int(name)]
            raise UsageError(f"no column {name!r} in the header ({', '.join(map(repr, header))})")

        self.fields = [locate(f) for f in plan.fields]
        self.id = locate(plan.id_field) if plan.id_field is not None else None

    @staticmethod
    def get(row: list[str], where: tuple[int, str]) -> str:
        k, name = where
        if k >= len(row):
            raise MissingField(f"no {name!r}: the row has {len(row)} column(s)", field=name)
        return row[k]


class _Source:
    """The input file (or stdin) and the records in it, from the start or from a checkpoint."""

    def __init__(self, options: ScoreOptions, plan: _Plan, limits: Limits) -> None:
        self.path, self.plan, self.limits = options.input, plan, limits
        self.max_bytes = max(4 << 20, 16 * limits.max_chars)
        self.task = options.task
        try:
            if self.path == "-":
                self._f: BinaryIO = sys.stdin.buffer
                self.size = None
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
        self.seekable = self.path != "-" and self.size is not None
        self.columns: _Columns | None = None
        self._lines = _Lines(self._f, max_bytes=self.max_bytes)
        if plan.format in ("csv", "tsv"):
            try:
                self._csv_rows = self._csv_reader() if plan.format == "csv" else None
                self.columns = _Columns(plan, self._read_header() if plan.header else None)
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self._f is not sys.stdin.buffer:
            self._f.close()

    # -- lines -> rows -------------------------------------------------------------------------

    def _next_line(self) -> tuple[bytes | None, bool] | None:
        try:
            return self._lines.next()
        except OSError as e:
            raise InputOutputError(f"cannot read the input {self.path}: {e.strerror or e}") from None

    def _csv_reader(self) -> Iterator[list[str]]:
        """``csv.reader`` over decoded lines; a bad line (UTF-8, too long) marks its record bad."""
        self._row_error: ServiceError | None = None

        def feed() -> Iterator[str]:
            while (got := self._next_line()) is not None:
                content, ok = got
                if not ok:
                    self._row_error = self._row_error or _too_long(self.max_bytes)
                    yield "\n"
                    continue
                try:
                    yield _decode(content) + "\n"
                except InvalidUtf8 as e:
                    self._row_error = self._row_error or e
                    yield content.decode("utf-8", "replace") + "\n"

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
        got = self._next_line()
        if got is None:
            return None
        content, ok = got
        if not ok:
            return _too_long(self.max_bytes)
        try:
            text = _decode(content)
        except InvalidUtf8 as e:
            return e
        return text.split("\t") if text else EmptyLine("empty line")

    def _read_header(self) -> list[str]:
        row = self._next_row()
        if row is None:
            raise UsageError(f"{self.path} is empty: expected a header line (or pass --no-header)")
        if isinstance(row, ServiceError):
            raise UsageError(f"{self.path}: cannot read the header line: {row}")
        return row

    # -- records -------------------------------------------------------------------------------

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
        parse = {"jsonl": self._jsonl, "text": self._text_line}.get(self.plan.format, self._row)
        while True:
            line = self._lines.line + 1
            rec = parse(line)
            if rec is None:
                return
            yield rec

    def _record(self, line: int, *, id: Any = None, value: Any = None, error: ServiceError | None = None):
        return Record(line, self._lines.offset, self._lines.line, id=id, value=value, error=error)

    def _values(self, get: Callable[[str, int], object], names: Sequence[str]) -> Any:
        texts = tuple(_text(get(name, k), name, self.limits) for k, name in enumerate(names))
        return texts if self.task == "similarity" else texts[0]

    def _jsonl(self, line: int) -> Record | None:
        got = self._next_line()
        if got is None:
            return None
        content, ok = got
        if not ok:
            return self._record(line, error=_too_long(self.max_bytes))
        rid = None
        try:
            text = _decode(content)
            if not text.strip():
                raise EmptyLine("empty line: expected a JSON object")
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InvalidJson(f"invalid JSON: {e.msg} at column {e.colno}") from None
            if not isinstance(obj, dict):
                raise InvalidRecord(f"expected a JSON object, got {type(obj).__name__}")
            if self.plan.id_field is not None:
                if self.plan.id_field not in obj:
                    raise MissingField(f"no field {self.plan.id_field!r}", field=self.plan.id_field)
                rid = obj[self.plan.id_field]

            def get(name: str, k: int) -> object:
                if name not in obj:
                    raise MissingField(f"no field {name!r}", field=name)
                return obj[name]

            return self._record(line, id=rid, value=self._values(get, self.plan.fields))
        except ServiceError as e:
            return self._record(line, id=rid, error=e)

    def _text_line(self, line: int) -> Record | None:
        got = self._next_line()
        if got is None:
            return None
        content, ok = got
        if not ok:
            return self._record(line, error=_too_long(self.max_bytes))
        try:
            return self._record(line, value=_text(_decode(content), "text", self.limits))
        except ServiceError as e:
            return self._record(line, error=e)

    def _row(self, line: int) -> Record | None:
        row = self._next_row()
        if row is None:
            return None
        if isinstance(row, ServiceError):
            return self._record(line, error=row)
        cols, rid = self.columns, None
        try:
            if cols.id is not None:
                rid = cols.get(row, cols.id)
            names = [name for _, name in cols.fields]
            value = self._values(lambda name, k: cols.get(row, cols.fields[k]), names)
            return self._record(line, id=rid, value=value)
        except ServiceError as e:
            return self._record(line, id=rid, error=e)


# --------------------------------------------------------------------------------------------
# Scoring one window: one core job, core's batching; one by one only when the job fails
# --------------------------------------------------------------------------------------------


def _window_engine(engine: Engine, window: int) -> Engine:
    """The engine as one job of ``window`` records needs it: the same runtime, tokenizer, NER windows
    and batch budget; room for ``window`` items and ``window x max_entities`` entities (each record is
    still held to ``max_entities`` on its own, see :func:`_results`)."""
    limits = dataclasses.replace(
        engine.limits, max_items=max(window, 1), max_entities=engine.limits.max_entities * max(window, 1)
    )
    return Engine(
        engine.runtime, engine.tokenizer, engine.manifest, limits=limits,
        ner_max_length=engine.ner_max_length, ner_stride=engine.ner_stride,
    )  # fmt: skip


def _prepare(engine: Engine, task: Task, values: list[Any], threshold: float | None):
    if task == "ner":
        return engine.prepare_ner(values, threshold)
    if task == "similarity":
        return engine.prepare_pairs(values)
    return engine.prepare_embed(values)


def _entity(e: Entity) -> dict[str, Any]:
    return {"start": e.start, "end": e.end, "label": e.label, "text": e.text, "score": e.score}


def _results(engine: Engine, task: Task, result: Any) -> list[dict[str, Any] | ServiceError]:
    """Per-record output fields (vectors under the private key ``_vector``) from one job's result."""
    if task == "ner":
        limit = engine.limits.max_entities
        out: list[dict[str, Any] | ServiceError] = []
        for ents in result.entities:
            if len(ents) > limit:
                out.append(
                    TooManyEntities(
                        f"{len(ents)} entities for this text, more than max_entities {limit}; "
                        "raise the threshold",
                        field="threshold",
                        limit=limit,
                    )
                )
            else:
                out.append({"entities": [_entity(e) for e in ents]})
        return out
    if task == "similarity":
        return [{"score": s, "truncated": t} for s, t in zip(result.scores, result.truncated)]
    return [{"_vector": v, "truncated": t} for v, t in zip(result.vectors, result.truncated)]


def _score_window(
    engine: Engine, task: Task, records: list[Record], job: Any, threshold: float | None
) -> None:
    """Run the window's job (prepared by :func:`_prepare_window`) and put each record's result or
    error on it. When the job fails as a whole (an inference error, an entity budget), its records
    are run one by one, so only the records that fail on their own get error lines."""
    good = [r for r in records if r.error is None]
    if not good:
        return
    try:
        if isinstance(job, ServiceError):  # preparing the window failed
            raise job
        results = _results(engine, task, engine.execute(job))
    except ServiceError as e:  # an inference error, the window's entity budget, ...
        log.warning("a window of %d records failed as a whole (%s); scoring them one by one", len(good), e)
        results = []
        for r in good:
            try:
                one = engine.execute(_prepare(engine, task, [r.value], threshold))
                results += _results(engine, task, one)
            except ServiceError as err:
                results.append(err)
    for r, res in zip(good, results):
        if isinstance(res, ServiceError):
            r.error = res
        else:
            r.vector = res.pop("_vector", None)
            r.result = res


def _prepare_window(wengine: Engine, task: Task, records: list[Record], threshold: float | None):
    """Validate + tokenize a window's valid records into one core job (runs on the reader thread);
    a :class:`ServiceError` is returned, for :func:`_score_window` to go one by one."""
    values = [r.value for r in records if r.error is None]
    try:
        return _prepare(wengine, task, values, threshold) if values else None
    except ServiceError as e:
        return e


# --------------------------------------------------------------------------------------------
# Output: JSONL lines, the .npy, the state file
# --------------------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates (an id from "\ud800" in JSON): escape them
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _line(rec: Record, row: int | None, vectors: bool) -> bytes:
    """The record's output line. A result JSON cannot hold (NaN, infinity) becomes an error line."""
    head: dict[str, Any] = {"line": rec.line}
    if rec.id is not None:
        head["id"] = rec.id
    if row is not None:  # the .npy row (NaN for an error line)
        head["row"] = row
    if rec.error is None:
        obj = dict(head)
        if rec.vector is not None and vectors:
            obj["vector"] = rec.vector.tolist()
        obj.update(rec.result)
        try:
            return _dumps(obj)
        except ValueError:
            rec.error, rec.vector = InferenceError("the model returned a value that is not finite"), None
    return _dumps(head | rec.error.to_dict())


def _fsync(f) -> None:
    f.flush()
    os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a directory be opened / synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Npy:
    """A float32 (rows, dim) ``.npy`` written in chunks behind a fixed-size header (shape rewritten in place)."""

    def __init__(self, path: Path, dim: int, *, rows: int = 0) -> None:
        self.path, self.dim, self.rows = path, dim, rows
        self.row_bytes = 4 * dim
        fresh = rows == 0
        self._f = open(path, "w+b" if fresh else "r+b")  # noqa: SIM115
        self._f.seek(NPY_HEADER + rows * self.row_bytes)
        self._f.truncate()
        self._header()

    @staticmethod
    def header_bytes(rows: int, dim: int) -> bytes:
        d = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}"
        body = d.encode("latin1").ljust(NPY_HEADER - 10 - 1) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body

    @staticmethod
    def rows_in(path: Path, dim: int) -> int:
        """Complete rows in an existing file, after checking its header."""
        with open(path, "rb") as f:
            head = f.read(NPY_HEADER)
            size = os.fstat(f.fileno()).st_size
        if len(head) < NPY_HEADER or not head.startswith(b"\x93NUMPY\x01\x00") or b"'<f4'" not in head:
            raise ResumeError(
                f"{path} is not a .npy written by `ropenlp score` (float32, {NPY_HEADER}-byte header)"
            )
        if f", {dim}), " not in head.decode("latin1"):
            raise ResumeError(f"{path} holds vectors of another dimension than this bundle's {dim}")
        return (size - NPY_HEADER) // (4 * dim)

    def _header(self) -> None:
        pos = self._f.tell()
        self._f.seek(0)
        self._f.write(self.header_bytes(self.rows, self.dim))
        self._f.seek(pos)

    def write(self, rows: np.ndarray) -> None:  # (n, dim) float32
        self._f.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        self.rows += len(rows)

    def sync(self) -> None:
        self._header()
        _fsync(self._f)

    def close(self) -> None:
        self._f.close()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class _StateFile:
    """``OUTPUT.state``: JSON lines. ``start`` (the fingerprint), ``checkpoint``s, ``resume``, ``complete``."""

    path: Path
    start: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None  # the last one
    complete: dict[str, Any] | None = None
    valid_bytes: int = 0  # up to the end of the last complete entry (a torn one after it is cut on resume)

    @classmethod
    def read(cls, path: Path) -> _StateFile:
        state = cls(path)
        try:
            lines = path.read_bytes().split(b"\n")
        except OSError as e:
            raise InputOutputError(f"cannot read the state file {path}: {e.strerror or e}") from None
        pos = 0
        for k, raw in enumerate(lines):
            pos += len(raw) + 1
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                if k == len(lines) - 1:  # no newline after it: torn, even if it parses
                    raise ValueError
            except ValueError:
                if k >= len(lines) - 2:  # a torn last line: the checkpoint before it stands
                    break
                raise ResumeError(f"{path} is corrupt (line {k + 1} is not JSON)") from None
            state.valid_bytes = pos
            event = entry.get("event")
            if event == "start":
                state.start = entry
            elif event == "checkpoint":
                state.checkpoint, state.complete = entry, None
            elif event == "complete":
                state.complete = entry
        if state.start is None or state.start.get("version") != STATE_VERSION:
            raise ResumeError(f"{path} is not a ropenlp score state file of version {STATE_VERSION}")
        return state


class _Sink:
    """The output file (or stdout), the optional .npy and the state file; whole lines, checkpoints."""

    def __init__(
        self,
        options: ScoreOptions,
        *,
        fingerprint: dict[str, Any],
        dim: int,
        vectors: bool,
        resume_point: _Point | None,
    ) -> None:
        self.options, self.vectors = options, vectors
        self.path = None if options.streamed else Path(options.output)
        p = resume_point or _Point()
        self.records, self.errors, self.out_bytes = p.records, p.errors, p.out_bytes
        self.in_offset, self.in_line = p.in_offset, p.in_line
        self.npy: _Npy | None = None
        self._state = None
        self._last_sync = time.monotonic()
        self._closed = False
        try:
            if options.output == "-":
                self._out = sys.stdout.buffer
            elif self.path is None:
                self._out = open(options.output, "wb")  # noqa: SIM115 (a pipe, /dev/null)
            else:
                self._out = open(self.path, "r+b" if resume_point else "w+b")  # noqa: SIM115
                self._out.seek(p.out_bytes)
                self._out.truncate()
            if options.npy is not None:
                self.npy = _Npy(Path(options.npy), dim, rows=p.records if resume_point else 0)
            if self.path is not None:
                state_path = options.state_path
                self._state = open(state_path, "r+b" if resume_point else "wb")  # noqa: SIM115
                if resume_point:
                    self._state.seek(p.state_bytes)
                    self._state.truncate()
                    self._append({"event": "resume", "time": _now(), "records": p.records})
                else:
                    self._append({"event": "start", "version": STATE_VERSION, "time": _now(),
                                  "fingerprint": fingerprint})  # fmt: skip
                _fsync_dir(self.path)
        except OSError as e:
            raise InputOutputError(f"cannot write the output: {e.filename or ''} {e.strerror or e}") from None

    def _append(self, entry: dict[str, Any]) -> None:
        self._state.write(json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n")
        _fsync(self._state)

    def write(self, records: list[Record]) -> None:
        """Write a window's lines (one write, flushed) and its .npy rows (first); checkpoint when due."""
        try:
            if self.npy is not None:
                block = np.full((len(records), self.npy.dim), np.nan, dtype=np.float32)  # (n, dim)
                for k, r in enumerate(records):
                    if r.vector is not None:
                        block[k] = r.vector
                self.npy.write(block)
            row0 = self.records
            blob = b"".join(
                _line(r, row0 + k if self.npy is not None else None, self.vectors)
                for k, r in enumerate(records)
            )
            self._out.write(blob)
            self._out.flush()
        except OSError as e:
            raise InputOutputError(f"cannot write the output: {e.strerror or e}") from None
        self.records += len(records)
        self.errors += sum(r.error is not None for r in records)
        self.out_bytes += len(blob)
        self.in_offset, self.in_line = records[-1].end, records[-1].end_line
        if time.monotonic() - self._last_sync >= self.options.fsync_interval:
            self.checkpoint()

    def checkpoint(self) -> None:
        """fsync the .npy and the output, THEN record the checkpoint (a checkpoint never runs ahead)."""
        try:
            if self.npy is not None:
                self.npy.sync()
            if self._state is not None:
                _fsync(self._out)
                self._append({
                    "event": "checkpoint", "time": _now(), "records": self.records, "errors": self.errors,
                    "out_bytes": self.out_bytes, "in_offset": self.in_offset, "in_line": self.in_line,
                })  # fmt: skip
        except OSError as e:
            raise InputOutputError(f"cannot sync the output: {e.strerror or e}") from None
        self._last_sync = time.monotonic()

    def close(self, complete: Summary | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.checkpoint()
            if complete is not None and self._state is not None:
                self._append({"event": "complete", "time": _now(), **complete.to_dict()})
        finally:
            for f in (self._state, self.npy, None if self.options.output == "-" else self._out):
                if f is not None:
                    f.close()


# --------------------------------------------------------------------------------------------
# Resume: check the fingerprint, repair the output, find where to go on
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Point:
    records: int = 0  # output lines kept
    errors: int = 0
    out_bytes: int = 0
    in_offset: int = 0  # input position after the last kept record (0: from the start)
    in_line: int = 0
    checkpoint_records: int = 0  # records up to the checkpoint the input can be seeked to
    tail_lines: tuple[int, ...] = ()  # input line of each kept output line after that checkpoint
    complete: bool = False  # the state file marks the run complete and the output holds it all
    state_bytes: int = 0  # the state file's valid part (a torn entry after it is cut)


def _fingerprint(engine: Engine, o: ScoreOptions, plan: _Plan, source: _Source) -> dict[str, Any]:
    """What must not change between a run and its resumption (results or the input's identity)."""
    manifest_hash = hashlib.sha256(engine.manifest.model_dump_json().encode()).hexdigest()
    return {
        "task": o.task,
        "format": plan.format,
        "fields": list(plan.fields),
        "id_field": plan.id_field,
        "header": plan.header,
        "threshold": o.threshold,
        "npy": str(Path(o.npy).resolve()) if o.npy is not None else None,
        "vectors": plan.vectors,
        "input": source.identity,
        "bundle": {
            "name": engine.manifest.name,
            "manifest_sha256": manifest_hash,
            "precision": dict(getattr(engine.runtime, "precision", {})),
        },
        "limits": {
            "max_chars": engine.limits.max_chars,
            "max_entities": engine.limits.max_entities,
            "ner_max_length": engine.ner_max_length,
            "ner_stride": engine.ner_stride,
        },
    }


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for k in sorted(set(old) | set(new))
            for d in _differences(old.get(k), new.get(k), f"{where}{k}.")
        ]
    return [] if old == new else [f"{where.rstrip('.')}: {old!r} -> {new!r}"]


def _scan_tail(out: BinaryIO, start: int) -> tuple[list[tuple[int, int, bool]], int]:
    """Complete, parseable output lines from ``start``: (input line, end offset, is error) each, and
    the size of the torn or garbled tail after them."""
    out.seek(start)
    kept: list[tuple[int, int, bool]] = []
    pos, prev = start, -1
    for raw in out:
        if not raw.endswith(b"\n"):
            break
        try:
            obj = json.loads(raw)
            line = obj["line"]
        except (ValueError, KeyError, TypeError):
            break
        if not isinstance(line, int) or line <= prev:
            break
        pos += len(raw)
        kept.append((line, pos, "error" in obj))
        prev = line
    return kept, out.seek(0, os.SEEK_END) - pos


def _resume_point(o: ScoreOptions, fingerprint: dict[str, Any], dim: int | None) -> _Point | None:
    """Where a resumed run goes on; None when there is nothing to resume (a fresh run then)."""
    out, state_path = Path(o.output), o.state_path
    if not state_path.exists():
        if out.exists() and out.stat().st_size > 0:
            raise ResumeError(
                f"cannot resume: {out} exists but its state file {state_path} does not "
                "(was it written by another command?); start over with --overwrite"
            )
        log.info("--resume: no earlier run of this output (%s), starting from the beginning", state_path)
        return None
    state = _StateFile.read(state_path)
    changed = _differences(state.start["fingerprint"], fingerprint)
    if changed:
        raise ResumeError(
            "cannot resume: the arguments, the bundle or the input changed since the run that wrote "
            f"{out} ({'; '.join(changed)}); rerun with the original arguments and input, or start over "
            "with --overwrite"
        )
    if fingerprint["input"]["path"] == "-":
        log.warning("--resume from stdin: the input cannot be checked; it must be the same stream as before")
    cp = state.checkpoint or {}
    cp_records, cp_bytes = cp.get("records", 0), cp.get("out_bytes", 0)
    if not out.exists():
        raise ResumeError(
            f"cannot resume: {out} is gone but {state_path} remains; start over with --overwrite"
        )
    try:
        with open(out, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size < cp_bytes:
                raise ResumeError(
                    f"cannot resume: {out} has {size} bytes, fewer than the {cp_bytes} its last checkpoint "
                    "wrote: it was truncated or replaced; start over with --overwrite"
                )
            if cp_bytes:
                f.seek(cp_bytes - 1)
                if f.read(1) != b"\n":
                    raise ResumeError(
                        f"cannot resume: {out} does not match its state file; start over with --overwrite"
                    )
            tail, torn = _scan_tail(f, cp_bytes)
    except OSError as e:
        raise InputOutputError(f"cannot read {out} to resume it: {e.strerror or e}") from None
    done = cp_records + len(tail)
    if o.npy is not None:
        npy_rows = _Npy.rows_in(Path(o.npy), dim) if Path(o.npy).exists() else 0
        if npy_rows < cp_records:
            raise ResumeError(
                f"cannot resume: {o.npy} has {npy_rows} rows, fewer than the {cp_records} checkpointed; "
                "start over with --overwrite"
            )
        if npy_rows < done:
            log.warning("%s: %d rows for %d output lines: going on after %d", o.npy, npy_rows, done, npy_rows)
        done = min(done, npy_rows)
    tail = tail[: done - cp_records]
    out_bytes = tail[-1][1] if tail else cp_bytes
    if torn:
        log.warning("%s: cutting a torn or garbled tail of %d bytes after the last complete line", out, torn)
    log.info(
        "resuming %s after %d records (%d from the checkpoint, %d complete lines after it)",
        out, done, cp_records, len(tail),
    )  # fmt: skip
    complete = state.complete is not None and state.complete.get("records") == done and not torn
    return _Point(
        records=done,
        errors=cp.get("errors", 0) + sum(err for _, _, err in tail),
        out_bytes=out_bytes,
        in_offset=cp.get("in_offset", 0),
        in_line=cp.get("in_line", 0),
        checkpoint_records=cp_records,
        tail_lines=tuple(line for line, _, _ in tail),
        complete=complete,
        state_bytes=state.valid_bytes,
    )


def _skip(records: Iterator[Record], point: _Point, seeked: bool) -> _Point:
    """Skip the records already in the output, checking each kept tail line names the same input line;
    the point with the input position after the last of them (a later checkpoint must not record the
    older position of the checkpoint it was resumed from)."""
    n = point.records - (point.checkpoint_records if seeked else 0)
    first_tail = n - len(point.tail_lines)
    rec = None
    for k in range(n):
        rec = next(records, None)
        if rec is None:
            raise ResumeError(
                f"cannot resume: the input ends before the {point.records} records already scored"
            )
        if k >= first_tail and rec.line != point.tail_lines[k - first_tail]:
            raise ResumeError(
                f"cannot resume: output line {k + 1 + (point.records - n)} is for input line "
                f"{point.tail_lines[k - first_tail]}, but that record is on input line {rec.line} now"
            )
    return point if rec is None else dataclasses.replace(point, in_offset=rec.end, in_line=rec.end_line)


# --------------------------------------------------------------------------------------------
# Progress: a bar on a terminal, a log line otherwise
# --------------------------------------------------------------------------------------------


class Progress(Protocol):
    def start(self, *, total_bytes: int | None, done_bytes: int, done_records: int) -> None: ...

    def update(self, *, bytes_read: int, records: int, errors: int) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, **kw: Any) -> None:
        pass

    def update(self, **kw: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Rate:
    """records/s and ETA of this run (not counting what a resumed run found done)."""

    def start(self, *, total_bytes: int | None, done_bytes: int, done_records: int) -> None:
        self.total, self.bytes0, self.records0, self.t0 = (
            total_bytes,
            done_bytes,
            done_records,
            time.monotonic(),
        )

    def rate(self, records: int) -> float:
        return (records - self.records0) / max(time.monotonic() - self.t0, 1e-9)

    def eta(self, bytes_read: int) -> float | None:
        done = bytes_read - self.bytes0
        if self.total is None or done <= 0:
            return None
        return (self.total - bytes_read) * (time.monotonic() - self.t0) / done


class LogProgress(_Rate):
    """One log line every ``interval`` seconds (stderr is not a terminal)."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval, self._last = interval, time.monotonic()

    def update(self, *, bytes_read: int, records: int, errors: int) -> None:
        if time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        eta = self.eta(bytes_read)
        share = f", {100 * bytes_read / self.total:.1f}% of the input" if self.total else ""
        log.info(
            "scored %d records (%d errors)%s, %.0f records/s, ETA %s",
            records, errors, share, self.rate(records), "?" if eta is None else _hms(eta),
        )  # fmt: skip

    def close(self) -> None:
        pass


class BarProgress(_Rate):
    """A rich progress bar on stderr: bytes of the input done, records, records/s, errors, ETA."""

    def start(self, *, total_bytes: int | None, done_bytes: int, done_records: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        super().start(total_bytes=total_bytes, done_bytes=done_bytes, done_records=done_records)
        self._bar = Progress(
            TextColumn("scoring"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[records]:,} records, {task.fields[rate]:,.0f}/s, {task.fields[errors]:,} errors"),
            TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True), transient=False,
        )  # fmt: skip
        self._task = self._bar.add_task(
            "scoring",
            total=total_bytes,
            completed=done_bytes,
            records=done_records,
            rate=0.0,
            errors=0,
            eta="?",
        )
        self._bar.start()

    def update(self, *, bytes_read: int, records: int, errors: int) -> None:
        eta = self.eta(bytes_read)
        self._bar.update(
            self._task, completed=bytes_read, records=records, errors=errors, rate=self.rate(records),
            eta="?" if eta is None else _hms(eta),
        )  # fmt: skip

    def close(self) -> None:
        self._bar.stop()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def make_progress(
    mode: Literal["auto", "bar", "log", "none"] = "auto", *, interval: float = 30.0
) -> Progress:
    """``auto``: a bar when stderr is a terminal, else a log line every ``interval`` seconds."""
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "log"
    return {"bar": BarProgress, "log": lambda: LogProgress(interval), "none": NoProgress}[mode]()


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    records: int  # output lines, earlier runs of a resumed output included
    errors: int  # error lines among them
    new_records: int  # scored by this run
    seconds: float
    output: str
    resumed_from: int = 0
    complete: bool = True
    stopped: str | None = None

    @property
    def records_per_s(self) -> float:
        return self.new_records / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["records_per_s"] = round(self.records_per_s, 1)
        return d

    def line(self) -> str:
        head = "done" if self.complete else f"stopped ({self.stopped})"
        resumed = f" (resumed after {self.resumed_from})" if self.resumed_from else ""
        return (
            f"{head}: {self.records} records, {self.errors} error lines{resumed} -> {self.output}; "
            f"this run: {self.new_records} in {self.seconds:.1f} s, {self.records_per_s:,.0f} records/s"
        )


def _windows(records: Iterator[Record], first: int, size: int) -> Iterator[list[Record]]:
    """Lists of records: the first one ``first`` long (re-aligns a resumed run), then ``size`` each."""
    n = first
    while True:
        chunk = [rec for _, rec in zip(range(n), records)]
        if not chunk:
            return
        yield chunk
        n = size


def score(engine: Engine, options: ScoreOptions, *, progress: Progress | None = None) -> Summary:
    """Score ``options.input`` into ``options.output`` (see the module docstring). Returns the summary;
    raises :class:`ScoreError` subclasses (:class:`Stopped` ones carry a summary)."""
    t0 = time.monotonic()
    progress = progress or NoProgress()
    plan = _plan(options, engine)
    if not (options.streamed or options.resume or options.overwrite):
        out = Path(options.output)
        if out.exists() and out.stat().st_size > 0:
            raise UsageError(f"{out} exists: pass --resume to go on after an interrupted run, or --overwrite")
    if options.npy is not None and Path(options.npy).resolve() in (
        Path(options.output).resolve(),
        Path(options.input).resolve(),
    ):
        raise UsageError("--npy names the input or the output file")
    source = _Source(options, plan, engine.limits)
    try:
        fingerprint = _fingerprint(engine, options, plan, source)
        dim = engine.manifest.similarity.dim if engine.manifest.similarity is not None else None
        point = _resume_point(options, fingerprint, dim) if options.resume else None
        if point is not None and point.complete:
            log.info("%s is complete already: nothing to resume", options.output)
            return Summary(point.records, point.errors, 0, time.monotonic() - t0, options.output,
                           resumed_from=point.records)  # fmt: skip
        seek = point is not None and point.in_offset > 0 and source.seekable
        records = source.records((point.in_offset, point.in_line) if seek else None)
        if point is not None:
            point = _skip(records, point, seek)
        sink = _Sink(options, fingerprint=fingerprint, dim=dim or 0, vectors=plan.vectors, resume_point=point)
        return _run(engine, options, plan, source, records, sink, point, progress, t0)
    finally:
        source.close()


class _Ahead:
    """Calls ``fn`` on a daemon thread one call ahead of the caller: while the caller scores window k,
    window k+1 is read and tokenized (at most one result waits; a daemon thread never holds up exit,
    even when blocked on a silent stdin)."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._call()

    def _call(self) -> None:
        self._ready, self._value, self._error = threading.Event(), None, None

        def target() -> None:
            try:
                self._value = self._fn()
            except BaseException as e:  # noqa: BLE001 (handed to the caller by next())
                self._error = e
            finally:
                self._ready.set()

        threading.Thread(target=target, name="score-reader", daemon=True).start()

    def next(self) -> Any:
        self._ready.wait()
        if self._error is not None:
            raise self._error
        value = self._value
        if value is not None:
            self._call()
        return value


def _run(engine, options, plan, source, records, sink, point, progress, t0) -> Summary:
    done0 = point.records if point else 0
    wengine = _window_engine(engine, options.window)
    task, threshold = options.task, options.threshold
    windows = _windows(records, options.window - done0 % options.window, options.window)

    def read_and_prepare() -> tuple[list[Record], Any] | None:
        w = next(windows, None)
        return None if w is None else (w, _prepare_window(wengine, task, w, threshold))

    def summary(complete: bool, stopped: str | None = None) -> Summary:
        return Summary(
            sink.records, sink.errors, sink.records - done0, time.monotonic() - t0, options.output,
            resumed_from=done0, complete=complete, stopped=stopped,
        )  # fmt: skip

    progress.start(total_bytes=source.size, done_bytes=sink.in_offset, done_records=sink.records)
    try:
        ahead = _Ahead(read_and_prepare)
        while (got := ahead.next()) is not None:
            window, job = got
            _score_window(engine, task, window, job, threshold)
            sink.write(window)
            progress.update(bytes_read=sink.in_offset, records=sink.records, errors=sink.errors)
            if options.max_errors is not None and sink.errors > options.max_errors:
                s = summary(False, f"more than {options.max_errors} errors")
                sink.close()
                raise TooManyErrors(
                    f"{sink.errors} error lines, more than --max-errors {options.max_errors}: stopped after "
                    f"{sink.records} records (rerun with --resume and a higher --max-errors to go on)",
                    s,
                )
    except KeyboardInterrupt:
        s = summary(False, "interrupted")
        sink.close()
        raise Interrupted(
            f"interrupted after {sink.records} records (rerun with --resume to go on)", s
        ) from None
    except BaseException:
        with contextlib.suppress(Exception):  # keep what was written; the original error is the one to see
            sink.close()
        raise
    finally:
        progress.close()
    s = summary(True)
    sink.close(complete=s)
    return s


__all__ = [
    "InputOutputError",
    "Interrupted",
    "Progress",
    "ResumeError",
    "ScoreError",
    "ScoreOptions",
    "Stopped",
    "Summary",
    "TooManyErrors",
    "UsageError",
    "make_progress",
    "score",
]
