"""The one scoring function: :func:`score_chunk`, a chunk of input records -> their output rows.

Every path calls it: the local run (:mod:`service.score.run`, one window at a time) and the Ray Data
actors (:mod:`service.score.ray`, one window per call), so the two cannot drift apart. It is pure in
the sense that matters: the rows depend only on the records, the chunk's first record number and the
engine's bundle and settings; bad records become error rows (the same error objects the CLI has always
written), a failing model run becomes error rows for the records that fail alone, never an exception.

A chunk is scored as ONE core job (length-sorted batches within ``batch_tokens``), so the same chunk
gives the same bytes wherever it runs. Chunks are aligned to record numbers (multiples of ``window``)
by both paths, which is why ``--ray`` writes exactly the bytes of a local run.

Read top to bottom: :class:`Row` (what a record becomes) -> output lines -> :class:`Scoring` (what
every chunk of a run needs) -> preparing a chunk (validate + tokenize) -> :func:`score_chunk`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core import Engine
from service.errors import InferenceError, ServiceError
from service.jobs import Job
from service.score.inputs import Record
from service.score.options import Plan, ScoreOptions, operation
from service.tasks import Operation

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Row:
    """One output line: what a record became."""

    line: int  # the input line the record starts on
    end: int  # input position just after the record (bytes; rows for Parquet)
    end_line: int  # lines read through it
    error_type: str | None  # None: a result
    data: bytes  # the JSON line, newline included (the vector in it when the plan says so)
    vector: np.ndarray | None = None  # float32 (dim,): for the .npy and Parquet's vector column


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


# --------------------------------------------------------------------------------------------
# What every chunk of a run needs
# --------------------------------------------------------------------------------------------


def _chunk_engine(engine: Engine, window: int) -> Engine:
    """The engine as one job of ``window`` records needs it: the same runtime, tokenizer, task settings
    and batch budget; room for ``window`` items and ``window x max_entities`` entities (each record is
    still held to ``max_entities`` on its own: ``Operation.records``)."""
    limits = dataclasses.replace(
        engine.limits, max_items=max(window, 1), max_entities=engine.limits.max_entities * max(window, 1)
    )
    return Engine(engine.runtime, engine.tokenizer, engine.manifest, limits=limits, options=engine.options)


@dataclass(frozen=True)
class Scoring:
    """What every chunk of a run needs: the operation, its flags, the engines, what a line carries."""

    op: Operation
    flags: dict[str, Any]  # the operation's score flags as given (threshold, decode, ...)
    engine: Engine  # one record at a time, each held to the limits
    wengine: Engine  # a whole chunk as one job
    vectors: bool  # the vector in the JSON line
    rows: bool  # the .npy row number in the JSON line (--npy)

    @classmethod
    def build(cls, engine: Engine, options: ScoreOptions, plan: Plan) -> Scoring:
        op = operation(options.task)
        given = {"threshold": options.threshold, "decode": options.decode}
        flags = {k: v for k, v in given.items() if k in op.score.flags}
        return cls(op, flags, engine, _chunk_engine(engine, options.window), plan.vectors, options.npy is not None)

    def job(self, engine: Engine, values: list[Any]) -> Job:
        return engine.prepare(self.op.name, self.op.score_query(values, self.flags))

    def results(self, result: Any) -> list[dict[str, Any] | ServiceError]:
        """Per-record output fields (a vector under "vector") from one job's result: the operation's
        records, the same shape as its HTTP response's items."""
        return self.op.records(result, self.engine.limits)


# --------------------------------------------------------------------------------------------
# A chunk: prepare (validate + tokenize), run, rows
# --------------------------------------------------------------------------------------------


def prepare_chunk(s: Scoring, records: list[Record]) -> Job | ServiceError | None:
    """Validate + tokenize a chunk's valid records into one core job (the local run does it on its
    reader thread); a :class:`ServiceError` is returned, for :func:`score_chunk` to go one by one."""
    values = [r.value for r in records if r.error is None]
    try:
        return s.job(s.wengine, values) if values else None
    except ServiceError as e:
        return e


def _run_chunk(s: Scoring, records: list[Record], job: Job | ServiceError | None) -> None:
    """Run the chunk's job and put each record's result or error on it. When the job fails as a whole
    (an inference error, an entity budget), its records are run one by one, so only the records that
    fail on their own get error lines."""
    good = [r for r in records if r.error is None]
    if not good:
        return
    try:
        if isinstance(job, ServiceError):  # preparing the chunk failed
            raise job
        results = s.results(s.engine.execute(job))
    except ServiceError as e:  # an inference error, the chunk's entity budget, ...
        log.warning("a chunk of %d records failed as a whole (%s); scoring them one by one", len(good), e)
        results = []
        for r in good:
            try:
                results += s.results(s.engine.execute(s.job(s.engine, [r.value])))
            except ServiceError as err:
                results.append(err)
    for r, res in zip(good, results):
        if isinstance(res, ServiceError):
            r.error = res
        else:
            r.vector = res.pop("vector", None) if s.op.score.vectors else None
            r.result = res


_UNPREPARED = object()


def score_chunk(s: Scoring, records: list[Record], first: int, job: Any = _UNPREPARED) -> list[Row]:
    """The output rows of ``records``, the chunk whose first record is record number ``first`` (0-based,
    the .npy row of the first). ``job``: the chunk's :func:`prepare_chunk`, when done ahead."""
    if job is _UNPREPARED:
        job = prepare_chunk(s, records)
    _run_chunk(s, records, job)
    rows = []
    for k, r in enumerate(records):
        data = output_line(r, first + k if s.rows else None, s.vectors)  # may turn r into an error
        vector = None if r.vector is None else np.asarray(r.vector, dtype=np.float32)
        rows.append(Row(r.line, r.end, r.end_line, None if r.error is None else r.error.error_type, data, vector))
    return rows
