"""The output of a scoring run: one JSON line per input record, the optional ``.npy`` of vectors, and
the state file; :class:`Sink` writes all three.

Read top to bottom: output lines -> fsync -> the ``.npy`` -> :class:`Sink`.

``--npy FILE`` writes the vectors as a float32 ``.npy`` of shape (records, dim): row k is output line k
(0-based, its ``row``), a row of NaN for an error line. It is written in chunks behind a fixed 128-byte
header whose shape is rewritten at every checkpoint, so an interrupted file is still a valid ``.npy``
of the rows checkpointed so far (``np.load(path, mmap_mode="r")`` reads it without loading it).

Durability (the fsync policy): after every window the whole lines of that window are written with
one ``write`` and flushed to the OS, so killing the process (even ``kill -9``) never loses a written
line; at most a torn last line, which ``--resume`` truncates. Every ``fsync_interval`` seconds (default
5; 0 = after every window) and at exit: the ``.npy`` and the output are fsync'ed, THEN a checkpoint
line is appended to the state file and fsync'ed, so a checkpoint never claims more than is on disk.

The state file ``OUTPUT.state`` (its format: :mod:`service.score.state`) holds JSON lines: ``start``
(the run's fingerprint), ``checkpoint`` (a :class:`~service.score.state.Position`), ``resume`` and
``complete`` (the summary); :mod:`service.score.resume` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InferenceError
from service.score.errors import InputOutputError, ResumeError
from service.score.inputs import Record
from service.score.options import ScoreOptions
from service.score.progress import Summary
from service.score.state import Point, Position, checkpoint_entry, complete_entry, encode, resume_entry, start_entry

NPY_HEADER = 128  # bytes; fixed, so the shape can be rewritten in place

# --------------------------------------------------------------------------------------------
# Output lines
# --------------------------------------------------------------------------------------------


def _dumps(obj: dict[str, Any]) -> bytes:
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates (an id from "\ud800" in JSON): escape them
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def output_line(rec: Record, row: int | None, vectors: bool) -> bytes:
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


# --------------------------------------------------------------------------------------------
# The .npy
# --------------------------------------------------------------------------------------------


class Npy:
    """A float32 (rows, dim) ``.npy`` written in chunks behind a fixed-size header (shape rewritten in place)."""

    def __init__(self, path: Path, dim: int, *, rows: int = 0) -> None:
        self.path, self.dim, self.rows = path, dim, rows
        self._f = open(path, "w+b" if rows == 0 else "r+b")  # noqa: SIM115
        self._f.seek(NPY_HEADER + rows * 4 * dim)
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

    def write(self, records: list[Record]) -> None:
        """One row per record: its vector, NaN for a record without one."""
        block = np.full((len(records), self.dim), np.nan, dtype="<f4")  # (n, dim)
        for k, r in enumerate(records):
            if r.vector is not None:
                block[k] = r.vector
        self._f.write(block.tobytes())
        self.rows += len(records)

    def sync(self) -> None:
        self._header()
        _fsync(self._f)

    def close(self) -> None:
        self._f.close()


# --------------------------------------------------------------------------------------------
# The sink: output, .npy and state file together
# --------------------------------------------------------------------------------------------


class Sink:
    """The output file (or stdout), the optional .npy and the state file; whole lines, checkpoints.
    A fresh output starts empty; a resumed one (``resume``) is cut back to where the resume point says."""

    def __init__(
        self, options: ScoreOptions, *, fingerprint: dict[str, Any], dim: int, vectors: bool,
        resume: Point | None,
    ) -> None:  # fmt: skip
        self.options, self.vectors = options, vectors
        self.path = None if options.streamed else Path(options.output)
        self.at = resume.at if resume is not None else Position()
        self.npy: Npy | None = None
        self._state = None
        self._last_sync = time.monotonic()
        self._closed = False
        try:
            if options.output == "-":
                self._out = sys.stdout.buffer
            elif self.path is None:
                self._out = open(options.output, "wb")  # noqa: SIM115 (a pipe, /dev/null)
            else:
                self._out = open(self.path, "r+b" if resume is not None else "w+b")  # noqa: SIM115
                self._out.seek(self.at.out_bytes)
                self._out.truncate()
            if options.npy is not None:
                self.npy = Npy(Path(options.npy), dim, rows=self.at.records)
            if self.path is not None:
                self._state = open(options.state_path, "r+b" if resume is not None else "wb")  # noqa: SIM115
                if resume is not None:
                    self._state.seek(resume.state_bytes)
                    self._state.truncate()
                    self._append(resume_entry(self.at.records))
                else:
                    self._append(start_entry(fingerprint))
                _fsync_dir(self.path)
        except OSError as e:
            raise InputOutputError(f"cannot write the output: {e.filename or ''} {e.strerror or e}") from None

    def _append(self, entry: dict[str, Any]) -> None:
        self._state.write(encode(entry))
        _fsync(self._state)

    def write(self, records: list[Record]) -> None:
        """Write a window's lines (one write, flushed) and its .npy rows (first); checkpoint when due."""
        row0 = self.at.records if self.npy is not None else None
        try:
            if self.npy is not None:
                self.npy.write(records)
            blob = b"".join(
                output_line(r, None if row0 is None else row0 + k, self.vectors)
                for k, r in enumerate(records)
            )
            self._out.write(blob)
            self._out.flush()
        except OSError as e:
            raise InputOutputError(f"cannot write the output: {e.strerror or e}") from None
        self.at = Position(
            records=self.at.records + len(records),
            errors=self.at.errors + sum(r.error is not None for r in records),
            out_bytes=self.at.out_bytes + len(blob),
            in_offset=records[-1].end,
            in_line=records[-1].end_line,
        )
        if time.monotonic() - self._last_sync >= self.options.fsync_interval:
            self.checkpoint()

    def checkpoint(self) -> None:
        """fsync the .npy and the output, THEN record the checkpoint (a checkpoint never runs ahead)."""
        try:
            if self.npy is not None:
                self.npy.sync()
            if self._state is not None:
                _fsync(self._out)
                self._append(checkpoint_entry(self.at))
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
                self._append(complete_entry(complete.to_dict()))
        finally:
            for f in (self._state, self.npy, None if self.options.output == "-" else self._out):
                if f is not None:
                    f.close()
