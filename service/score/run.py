"""The scoring run: :func:`score` reads the input a window at a time, scores each window as one core job
and writes its lines.

Read top to bottom: scoring one window (one core job, core's batching; one by one only when the job
fails) -> reading ahead on a second thread -> :func:`score` (set-up, resume) -> the window loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core import Engine
from service.errors import ServiceError
from service.jobs import Job
from service.tasks import Operation
from service.score.errors import Interrupted, TooManyErrors, UsageError
from service.score.inputs import Record, Source
from service.score.options import ScoreOptions, operation, plan_for
from service.score.outputs import Sink
from service.score.progress import NoProgress, Progress, Summary
from service.score.resume import fingerprint, resume_point, skip_done

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Scoring one window: one core job, core's batching; one by one only when the job fails
# --------------------------------------------------------------------------------------------


def _window_engine(engine: Engine, window: int) -> Engine:
    """The engine as one job of ``window`` records needs it: the same runtime, tokenizer, task settings
    and batch budget; room for ``window`` items and ``window x max_entities`` entities (each record is
    still held to ``max_entities`` on its own: ``Operation.records``)."""
    limits = dataclasses.replace(
        engine.limits, max_items=max(window, 1), max_entities=engine.limits.max_entities * max(window, 1)
    )
    return Engine(engine.runtime, engine.tokenizer, engine.manifest, limits=limits, options=engine.options)


@dataclass(frozen=True)
class _Scoring:
    """What every window of a run needs: the operation, its flags, the engines."""

    op: Operation
    flags: dict[str, Any]  # the operation's score flags as given (threshold, decode, ...)
    engine: Engine  # one record at a time, each held to the limits
    wengine: Engine  # a whole window as one job

    def job(self, engine: Engine, values: list[Any]) -> Job:
        return engine.prepare(self.op.name, self.op.score_query(values, self.flags))

    def results(self, result: Any) -> list[dict[str, Any] | ServiceError]:
        """Per-record output fields (a vector under "vector") from one job's result: the operation's
        records, the same shape as its HTTP response's items."""
        return self.op.records(result, self.engine.limits)


def _prepare_window(s: _Scoring, records: list[Record]) -> Job | ServiceError | None:
    """Validate + tokenize a window's valid records into one core job (runs on the reader thread);
    a :class:`ServiceError` is returned, for :func:`_score_window` to go one by one."""
    values = [r.value for r in records if r.error is None]
    try:
        return s.job(s.wengine, values) if values else None
    except ServiceError as e:
        return e


def _score_window(s: _Scoring, records: list[Record], job: Job | ServiceError | None) -> None:
    """Run the window's job (prepared by :func:`_prepare_window`) and put each record's result or
    error on it. When the job fails as a whole (an inference error, an entity budget), its records
    are run one by one, so only the records that fail on their own get error lines."""
    good = [r for r in records if r.error is None]
    if not good:
        return
    try:
        if isinstance(job, ServiceError):  # preparing the window failed
            raise job
        results = s.results(s.engine.execute(job))
    except ServiceError as e:  # an inference error, the window's entity budget, ...
        log.warning("a window of %d records failed as a whole (%s); scoring them one by one", len(good), e)
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


# --------------------------------------------------------------------------------------------
# Reading ahead
# --------------------------------------------------------------------------------------------


def _windows(records: Iterator[Record], first: int, size: int) -> Iterator[list[Record]]:
    """Lists of records: the first one ``first`` long (re-aligns a resumed run), then ``size`` each."""
    n = first
    while True:
        chunk = [rec for _, rec in zip(range(n), records)]
        if not chunk:
            return
        yield chunk
        n = size


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


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def score(engine: Engine, options: ScoreOptions, *, progress: Progress | None = None) -> Summary:
    """Score ``options.input`` into ``options.output`` (see :mod:`service.score`). Returns the summary;
    raises :class:`~service.score.errors.ScoreError` subclasses (:class:`Stopped` ones carry a summary)."""
    t0 = time.monotonic()
    plan = plan_for(options, engine)
    if not (options.streamed or options.resume or options.overwrite):
        out = Path(options.output)
        if out.exists() and out.stat().st_size > 0:
            raise UsageError(f"{out} exists: pass --resume to go on after an interrupted run, or --overwrite")
    if options.npy is not None and Path(options.npy).resolve() in (
        Path(options.output).resolve(),
        Path(options.input).resolve(),
    ):
        raise UsageError("--npy names the input or the output file")
    source = Source(options, plan, engine.limits)
    try:
        fp = fingerprint(engine, options, plan, source)
        dim = _vector_dim(engine, operation(options.task))
        point = resume_point(options, fp, dim) if options.resume else None
        if point is not None and point.complete:
            log.info("%s is complete already: nothing to resume", options.output)
            return Summary(point.at.records, point.at.errors, 0, time.monotonic() - t0, options.output,
                           resumed_from=point.at.records)  # fmt: skip
        seek = point is not None and point.at.in_offset > 0 and source.seekable
        records = source.records((point.at.in_offset, point.at.in_line) if seek else None)
        if point is not None:
            point = skip_done(records, point, seek)
        sink = Sink(options, fingerprint=fp, dim=dim or 0, vectors=plan.vectors, resume=point)
        return _score_windows(engine, options, records, sink, progress or NoProgress(), source.size, t0)
    finally:
        source.close()


def _score_windows(
    engine: Engine,
    options: ScoreOptions,
    records: Iterator[Record],
    sink: Sink,
    progress: Progress,
    total_bytes: int | None,
    t0: float,
) -> Summary:
    """The window loop: read and prepare window k+1 while window k is scored and written."""
    done0 = sink.at.records
    op = operation(options.task)
    flags = {k: v for k, v in (("threshold", options.threshold), ("decode", options.decode)) if k in op.score.flags}
    scoring = _Scoring(op, flags, engine, _window_engine(engine, options.window))
    windows = _windows(records, options.window - done0 % options.window, options.window)

    def read_and_prepare() -> tuple[list[Record], Any] | None:
        w = next(windows, None)
        return None if w is None else (w, _prepare_window(scoring, w))

    def summary(complete: bool, stopped: str | None = None) -> Summary:
        return Summary(
            sink.at.records, sink.at.errors, sink.at.records - done0, time.monotonic() - t0, options.output,
            resumed_from=done0, complete=complete, stopped=stopped,
        )  # fmt: skip

    progress.start(total_bytes=total_bytes, done_bytes=sink.at.in_offset, done_records=done0)
    try:
        ahead = _Ahead(read_and_prepare)
        while (got := ahead.next()) is not None:
            window, job = got
            _score_window(scoring, window, job)
            sink.write(window)
            progress.update(bytes_read=sink.at.in_offset, records=sink.at.records, errors=sink.at.errors)
            if options.max_errors is not None and sink.at.errors > options.max_errors:
                s = summary(False, f"more than {options.max_errors} errors")
                sink.close()
                raise TooManyErrors(
                    f"{sink.at.errors} error lines, more than --max-errors {options.max_errors}: stopped after "
                    f"{sink.at.records} records (rerun with --resume and a higher --max-errors to go on)",
                    s,
                )
    except KeyboardInterrupt:
        s = summary(False, "interrupted")
        sink.close()
        raise Interrupted(
            f"interrupted after {sink.at.records} records (rerun with --resume to go on)", s
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


def _vector_dim(engine: Engine, op: Operation) -> int | None:
    """The width of the vectors an operation's records carry (the ``.npy``), else None."""
    return engine.task(op.task).vector_dim if op.score.vectors and op.task in engine.tasks else None
