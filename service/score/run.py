"""The scoring run: :func:`score` reads the input a window at a time, scores each window with
:func:`~service.score.chunk.score_chunk` (one core job) and writes its lines.

Read top to bottom: reading ahead on a second thread -> :func:`open_run` (checks, fingerprint, resume:
shared with the Ray path, :mod:`service.score.ray`) -> :func:`score` -> the window loop ->
:func:`write_windows` (the writing loop both paths share).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.core import Engine
from service.tasks import Operation
from service.score.chunk import Row, Scoring, prepare_chunk, score_chunk
from service.score.errors import Interrupted, TooManyErrors, UsageError
from service.score.inputs import Record, Source
from service.score.options import Plan, ScoreOptions, operation, plan_for
from service.score.outputs import Sink
from service.score.progress import NoProgress, Progress, Summary
from service.score.resume import fingerprint, resume_point, skip_done
from service.score.state import Point

log = logging.getLogger(__name__)

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


@dataclass
class Run:
    """A run set up by :func:`open_run`: its plan, the input, the fingerprint and where it goes on."""

    options: ScoreOptions
    plan: Plan
    source: Source
    fingerprint: dict[str, Any]
    dim: int | None  # the width of the vectors the records carry
    point: Point | None  # where a resumed run goes on (None: from the start)
    t0: float

    @property
    def total_bytes(self) -> int | None:
        return None if self.plan.format == "parquet" else self.source.size  # Parquet: rows, not bytes

    def done(self) -> Summary | None:
        """The summary of a run that is complete already (nothing to resume), else None."""
        p = self.point
        if p is None or not p.complete:
            return None
        log.info("%s is complete already: nothing to resume", self.options.output)
        return Summary(p.at.records, p.at.errors, 0, time.monotonic() - self.t0, self.options.output,
                       resumed_from=p.at.records)  # fmt: skip

    def records(self) -> Iterator[Record]:
        """The records still to score (a resumed run: after those in the output); fixes ``point``."""
        p = self.point
        seek = p is not None and p.at.in_offset > 0 and self.source.seekable
        records = self.source.records((p.at.in_offset, p.at.in_line) if seek else None)
        if p is not None:
            self.point = skip_done(records, p, seek)
        return records

    def sink(self) -> Sink:
        return Sink(self.options, self.plan, fingerprint=self.fingerprint, dim=self.dim or 0, resume=self.point)


def open_run(engine: Engine, options: ScoreOptions) -> Run:
    """Check the options, open the input, fingerprint the run and find where a resumed one goes on.
    The caller closes ``run.source``."""
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
    except BaseException:
        source.close()
        raise
    return Run(options, plan, source, fp, dim, point, t0)


def score(engine: Engine, options: ScoreOptions, *, progress: Progress | None = None) -> Summary:
    """Score ``options.input`` into ``options.output`` (see :mod:`service.score`). Returns the summary;
    raises :class:`~service.score.errors.ScoreError` subclasses (:class:`Stopped` ones carry a summary)."""
    run = open_run(engine, options)
    try:
        if (done := run.done()) is not None:
            return done
        records = run.records()
        return _score_windows(engine, run, records, run.sink(), progress or NoProgress())
    finally:
        run.source.close()


def _score_windows(
    engine: Engine, run: Run, records: Iterator[Record], sink: Sink, progress: Progress
) -> Summary:
    """The window loop: read and prepare window k+1 while window k is scored and written."""
    options = run.options
    done0 = sink.at.records
    scoring = Scoring.build(engine, options, run.plan)
    windows = _windows(records, options.window - done0 % options.window, options.window)

    def read_and_prepare() -> tuple[list[Record], Any] | None:
        w = next(windows, None)
        return None if w is None else (w, prepare_chunk(scoring, w))

    def scored() -> Iterator[list[Row]]:
        ahead = _Ahead(read_and_prepare)
        while (got := ahead.next()) is not None:
            window, job = got
            yield score_chunk(scoring, window, sink.at.records, job)

    return write_windows(run, scored(), sink, progress)


def write_windows(run: Run, windows: Iterable[list[Row]], sink: Sink, progress: Progress) -> Summary:
    """Write scored windows in order, checkpointing, stopping after ``--max-errors``; the summary.
    On Ctrl-C (or SIGTERM) what was written is checkpointed and :class:`Interrupted` raised."""
    options = run.options
    done0 = sink.at.records

    def summary(complete: bool, stopped: str | None = None) -> Summary:
        return Summary(
            sink.at.records, sink.at.errors, sink.at.records - done0, time.monotonic() - run.t0, options.output,
            resumed_from=done0, complete=complete, stopped=stopped,
        )  # fmt: skip

    progress.start(total_bytes=run.total_bytes, done_bytes=sink.at.in_offset, done_records=done0)
    try:
        for rows in windows:
            sink.write(rows)
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
