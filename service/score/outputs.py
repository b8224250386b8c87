"""The output of a scoring run: one JSON line per input record, the optional ``.npy`` of vectors, and
the state file; :class:`Sink` writes all three.

Read top to bottom: fsync -> the ``.npy`` -> Parquet -> :class:`Sink`. The lines themselves are made by
:func:`service.score.chunk.score_chunk`.

``--npy FILE`` writes the vectors as a float32 ``.npy`` of shape (records, dim): row k is output line k
(0-based, its ``row``), a row of NaN for an error line. It is written in chunks behind a fixed 128-byte
header whose shape is rewritten at every checkpoint, so an interrupted file is still a valid ``.npy``
of the rows checkpointed so far (``np.load(path, mmap_mode="r")`` reads it without loading it).

Durability (the fsync policy): after every window the whole lines of that window are written with
one ``write`` and flushed to the OS, so killing the process (even ``kill -9``) never loses a written
line; at most a torn last line, which ``--resume`` truncates. Every ``fsync_interval`` seconds (default
5; 0 = after every window) and at exit: the ``.npy`` and the output are fsync'ed, THEN a checkpoint
line is appended to the state file and fsync'ed, so a checkpoint never claims more than is on disk.

An output named ``*.parquet`` is a Parquet file instead (pyarrow: ``pip install 'ropenlp[parquet]'``),
one row per input record, in input order: ``line`` (int64), ``error_type`` (string, null for a result),
``record`` (the JSON line's object as text, without the vector) and, for operations with vectors,
``vector`` (``list<float32>``, null on an error row). It is written to ``OUTPUT.partial`` and renamed
when complete; it has no state file and cannot be resumed: an interrupted run is rerun whole with
``--overwrite`` (idempotent).

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

from service.score.chunk import Row
from service.score.errors import InputOutputError, ResumeError
from service.score.inputs import pyarrow_module
from service.score.options import Plan, ScoreOptions
from service.score.progress import Summary
from service.score.state import Point, Position, checkpoint_entry, complete_entry, encode, resume_entry, start_entry

NPY_HEADER = 128  # bytes; fixed, so the shape can be rewritten in place

# --------------------------------------------------------------------------------------------
# Durability
# --------------------------------------------------------------------------------------------


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

    def write(self, records: list[Row]) -> None:
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
# Parquet
# --------------------------------------------------------------------------------------------


class ParquetOut:
    """The Parquet output (see the module docstring), written to ``path + '.partial'`` and renamed on
    :meth:`finish`. A row group per ``row_group`` rows (whole windows)."""

    def __init__(self, path: Path, *, vectors: bool, row_group: int = 65536) -> None:
        pa = self._pa = pyarrow_module()
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        fields = [pa.field("line", pa.int64()), pa.field("error_type", pa.string()), pa.field("record", pa.string())]
        if vectors:
            fields.append(pa.field("vector", pa.list_(pa.float32())))
        self.schema = pa.schema(fields)
        self._writer = pa.parquet.ParquetWriter(self.partial, self.schema)
        self._rows: list[Row] = []
        self._row_group = row_group

    def write(self, rows: list[Row]) -> None:
        self._rows += rows
        if len(self._rows) >= self._row_group:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa, rows = self._pa, self._rows
        columns = {
            "line": pa.array([r.line for r in rows], pa.int64()),
            "error_type": pa.array([r.error_type for r in rows], pa.string()),
            "record": pa.array([r.data[:-1].decode("utf-8") for r in rows], pa.string()),
        }
        if "vector" in self.schema.names:
            columns["vector"] = pa.array(
                [None if r.vector is None else r.vector for r in rows], pa.list_(pa.float32())
            )
        self._writer.write_table(pa.table(columns, schema=self.schema))
        self._rows = []

    def finish(self, complete: bool) -> None:
        self._flush()
        self._writer.close()
        if complete:
            os.replace(self.partial, self.path)
            _fsync_dir(self.path)


# --------------------------------------------------------------------------------------------
# The sink: output, .npy and state file together
# --------------------------------------------------------------------------------------------


class Sink:
    """The output file (or stdout), the optional .npy and the state file; whole lines, checkpoints.
    A fresh output starts empty; a resumed one (``resume``) is cut back to where the resume point says."""

    def __init__(
        self, options: ScoreOptions, plan: Plan, *, fingerprint: dict[str, Any], dim: int, resume: Point | None,
    ) -> None:  # fmt: skip
        self.options = options
        self.path = None if options.streamed else Path(options.output)
        self.at = resume.at if resume is not None else Position()
        self.npy: Npy | None = None
        self.parquet: ParquetOut | None = None
        self._state = None
        self._out = None
        self._last_sync = time.monotonic()
        self._closed = False
        try:
            if plan.output_format == "parquet":
                self.parquet = ParquetOut(Path(options.output), vectors=dim > 0)
                self.path = None  # no state file: a Parquet output is rerun whole
            elif options.output == "-":
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

    def write(self, records: list[Row]) -> None:
        """Write a window's lines (one write, flushed) and its .npy rows (first); checkpoint when due."""
        try:
            if self.npy is not None:
                self.npy.write(records)
            if self.parquet is not None:
                self.parquet.write(records)
                blob = b""
            else:
                blob = b"".join(r.data for r in records)
                self._out.write(blob)
                self._out.flush()
        except OSError as e:
            raise InputOutputError(f"cannot write the output: {e.strerror or e}") from None
        self.at = Position(
            records=self.at.records + len(records),
            errors=self.at.errors + sum(r.error_type is not None for r in records),
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
            if self.parquet is not None:
                self.parquet.finish(complete is not None)
            if complete is not None and self._state is not None:
                self._append(complete_entry(complete.to_dict()))
        finally:
            for f in (self._state, self.npy, None if self.options.output == "-" else self._out):
                if f is not None:
                    f.close()
