"""``ropenlp score ... --ray``: the same scoring run with the model on Ray Data actors.

What runs where:

* the **driver** (the ``ropenlp score`` process) does what a local run does before and after the model:
  checks the options, fingerprints the run, finds where ``--resume`` goes on (:func:`~service.score.run.open_run`),
  cuts the input into windows, and writes the scored windows in input order through the same
  :class:`~service.score.outputs.Sink` (output, ``.npy``, state file, checkpoints, ``--max-errors``);
* **Ray Data** runs ``map_batches`` over the windows with a pool of ``--actors`` actors
  (:class:`WindowScorer`), each reserving ``--threads-per-actor`` CPUs and running ONNX Runtime with as
  many intra-op threads (no over-subscription). An actor loads the bundle once, in ``__init__`` (ONNX
  Runtime sessions cannot be pickled); per window it reads the window's records from the input with
  the local reader (:class:`~service.score.inputs.Source`, seeked to the window) and calls
  :func:`~service.score.chunk.score_chunk`, the function the local run calls.

Windows are aligned to record numbers (multiples of ``--window``, as in a local run) and each is one
core job, so the output is byte for byte the local run's. Rows carry their window's first record
number: the driver checks each window comes back whole and in order (``preserve_order``).

The input is read by the actors, so on a cluster its path must be readable on every node (a shared
file system); the driver only scans it for window boundaries (newlines; CSV is parsed; Parquet's row
counts). A failed actor is restarted and its window retried by Ray Data (its defaults). If the
driver itself stops (Ctrl-C, kill), the output holds whole windows up to the last checkpoint:
``--resume`` goes on after them exactly as a local run does (windows already written are skipped, not
scored again); a Parquet output is rerun whole with ``--overwrite``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core import Engine
from service.score.chunk import Row, Scoring, score_chunk
from service.score.errors import ScoreError, UsageError
from service.score.inputs import Source
from service.score.options import Plan, ScoreOptions
from service.score.progress import NoProgress, Progress, Summary
from service.score.run import Run, open_run, write_windows
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: ``address`` None starts (or joins, with ``RAY_ADDRESS``) a local cluster,
    ``"auto"`` joins the running one, ``"ray://host:10001"`` a remote one."""

    address: str | None = None
    actors: int = 1
    threads_per_actor: int = 1
    init_kwargs: dict[str, Any] | None = None  # more ray.init arguments (tests: num_cpus, object store)


class RayError(ScoreError):
    """Ray is missing, cannot start, or lost a window (exit 3: rerun with --resume)."""

    exit_code = 3


def ray_module():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'ropenlp[ray]'") from None
    return ray


# --------------------------------------------------------------------------------------------
# Windows: where each starts in the input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    first: int  # the number of its first record (0-based, in the whole output)
    offset: int  # input position before it (bytes; rows for Parquet)
    line: int  # input lines read before it
    count: int  # records in it


def _sizes(first_size: int, size: int) -> Iterator[int]:
    yield first_size
    yield from itertools.repeat(size)


def windows(source: Source, start: tuple[int, int], first: int, window: int) -> Iterator[Window]:
    """The windows from input position ``start`` = (offset, lines read) on, the first of them holding
    record number ``first``; aligned as a local run aligns them (the first ``window - first % window``
    long). JSONL, text and TSV: a record is a line, found by scanning for newlines; Parquet: row counts;
    CSV (a record may span lines): parsed."""
    sizes = _sizes(window - first % window, window)
    fmt = source.plan.format
    if fmt == "parquet":
        yield from _row_windows(source, start[0], first, sizes)
    elif fmt == "csv":
        yield from _record_windows(source, start, first, sizes)
    else:
        yield from _line_windows(source, start, first, sizes)


def _row_windows(source: Source, row: int, first: int, sizes: Iterator[int]) -> Iterator[Window]:
    from service.score.inputs import _ParquetRows

    total = _ParquetRows(source.path, list(source.plan.fields)).num_rows
    while row < total:
        n = min(next(sizes), total - row)
        yield Window(first, row, row, n)
        row, first = row + n, first + n


def _record_windows(source: Source, start: tuple[int, int], first: int, sizes: Iterator[int]) -> Iterator[Window]:
    records = source.records(start if start[0] > 0 else None)
    offset, line = start if start[0] > 0 else (source.data_start, source.data_line)
    while True:
        want = next(sizes)
        chunk = list(itertools.islice(records, want))
        if not chunk:
            return
        yield Window(first, offset, line, len(chunk))
        offset, line, first = chunk[-1].end, chunk[-1].end_line, first + len(chunk)


def _line_windows(source: Source, start: tuple[int, int], first: int, sizes: Iterator[int]) -> Iterator[Window]:
    """Windows of physical lines: a newline ends each (the last line may lack one)."""
    offset, line = start if start[0] > 0 else (source.data_start, source.data_line)
    w_offset, w_line, want, have = offset, line, next(sizes), 0
    with open(source.path, "rb") as f:
        f.seek(offset)
        pos, last_byte = offset, b"\n"
        while chunk := f.read(1 << 24):
            newlines = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)  # (n,) positions
            k = 0
            while len(newlines) - k >= want - have:
                k += want - have
                end = pos + int(newlines[k - 1]) + 1
                yield Window(first, w_offset, w_line, want)
                first, w_offset, w_line = first + want, end, w_line + want
                want, have = next(sizes), 0
            have += len(newlines) - k
            pos += len(chunk)
            last_byte = chunk[-1:]
        if pos > w_offset and (have > 0 or last_byte != b"\n"):
            # the lines after the last full window, and a last line without a newline
            yield Window(first, w_offset, w_line, have + (last_byte != b"\n"))


# --------------------------------------------------------------------------------------------
# The actor
# --------------------------------------------------------------------------------------------


_COLUMNS = ("first", "line", "end", "end_line", "error_type", "data")  # of an actor's output, besides "vector"


class WindowScorer:
    """One Ray Data actor: the bundle loaded once; per window, read its records and score them."""

    def __init__(self, settings: Settings, options: ScoreOptions, plan: Plan) -> None:
        from service.logs import configure_logging

        configure_logging(settings.log_format, settings.log_level)
        self.engine = Engine.from_settings(settings)
        self.options, self.plan = options, plan
        self.scoring = Scoring.build(self.engine, options, plan)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {k: [] for k in (*_COLUMNS, "vector")}
        for first, offset, line, count in zip(batch["first"], batch["offset"], batch["line"], batch["count"]):
            source = Source(self.options, self.plan, self.engine.limits)
            try:
                records = list(itertools.islice(source.records((int(offset), int(line))), int(count)))
            finally:
                source.close()
            for r in score_chunk(self.scoring, records, int(first)):
                out["first"].append(int(first))
                out["line"].append(r.line)
                out["end"].append(r.end)
                out["end_line"].append(r.end_line)
                out["error_type"].append(r.error_type)
                out["data"].append(r.data)
                out["vector"].append(r.vector)
        return _table(out)


def _table(columns: dict[str, list[Any]]):
    import pyarrow as pa

    return pa.table({
        "first": pa.array(columns["first"], pa.int64()),
        "line": pa.array(columns["line"], pa.int64()),
        "end": pa.array(columns["end"], pa.int64()),
        "end_line": pa.array(columns["end_line"], pa.int64()),
        "error_type": pa.array(columns["error_type"], pa.string()),
        "data": pa.array(columns["data"], pa.binary()),
        "vector": pa.array(columns["vector"], pa.list_(pa.float32())),
    })  # fmt: skip


def _rows(table) -> Iterator[tuple[int, Row]]:
    """(window's first record, row) from one output block; vectors sliced from the column's flat
    float32 buffer (no Python list per vector)."""
    cols = {name: table.column(name).to_pylist() for name in _COLUMNS}
    vectors = table.column("vector").combine_chunks()
    offsets = vectors.offsets.to_numpy()  # (n + 1,)
    flat = vectors.values.to_numpy(zero_copy_only=False)  # (sum of lengths,) float32
    valid = vectors.is_valid().to_numpy(zero_copy_only=False)
    for k, first in enumerate(cols["first"]):
        yield first, Row(
            cols["line"][k], cols["end"][k], cols["end_line"][k], cols["error_type"][k], cols["data"][k],
            flat[offsets[k] : offsets[k + 1]] if valid[k] else None,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def score_ray(
    settings: Settings, options: ScoreOptions, ray_options: RayOptions, *, progress: Progress | None = None
) -> Summary:
    """Score ``options.input`` into ``options.output`` on Ray Data (see the module docstring); the same
    summary, errors and output bytes as :func:`service.score.score`."""
    if ray_options.actors < 1 or ray_options.threads_per_actor < 1:
        raise UsageError("--actors and --threads-per-actor must be >= 1")
    if options.input == "-":
        raise UsageError("--ray reads the input on the actors: give --input FILE, not stdin")
    ray = ray_module()
    # the actors may run elsewhere (their own working directory): absolute paths
    settings = settings.model_copy(update={"bundle": settings.bundle_dir.resolve()})
    options = dataclasses.replace(options, input=os.path.abspath(options.input))
    driver = Engine.from_settings(settings.model_copy(update={"intra_op_threads": 1}))  # checks, fingerprint
    run = open_run(driver, options)
    try:
        if (done := run.done()) is not None:
            return done
        if run.point is not None:
            run.records()  # skips the records already written: run.point now says where the input goes on
        at = run.point.at if run.point is not None else None
        start = (at.in_offset, at.in_line) if at is not None else (0, 0)
        plan_windows = list(windows(run.source, start, at.records if at else 0, options.window))
        sink = run.sink()
        started = _init(ray, ray_options)
        scored = _scored(ray, settings, run, plan_windows, ray_options)
        try:
            return write_windows(run, scored, sink, progress or NoProgress())
        finally:
            scored.close()  # a run stopped early: Ray's iterator is closed while Ray is still up
            if started:
                ray.shutdown()
    finally:
        run.source.close()


def _init(ray, o: RayOptions) -> bool:
    """Connect to (or start) the cluster; True when this call started it (and shuts it down after)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=o.address, logging_level=logging.WARNING, log_to_driver=False, **(o.init_kwargs or {}))
    except Exception as e:  # noqa: BLE001 (Ray raises plain Exception for a start-up timeout)
        raise RayError(f"cannot start or join the Ray cluster {o.address or '(local)'}: {e}") from None
    return True


def _scored(ray, settings: Settings, run: Run, plan: list[Window], o: RayOptions) -> Iterator[list[Row]]:
    """The scored windows, in input order, each checked to come back whole."""
    if not plan:
        return
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    items = [{"first": w.first, "offset": w.offset, "line": w.line, "count": w.count} for w in plan]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        WindowScorer,
        fn_constructor_kwargs={
            "settings": settings.model_copy(update={"intra_op_threads": o.threads_per_actor}),
            "options": run.options,
            "plan": run.plan,
        },
        batch_size=1,  # one window per call
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=o.actors),
        num_cpus=o.threads_per_actor,  # = the actor's ONNX Runtime threads: no over-subscription
    )
    expected = iter(plan)
    window, current = next(expected), []

    def whole(rows: list[Row], w: Window) -> list[Row]:
        if len(rows) != w.count:
            raise RayError(f"Ray returned {len(rows)} rows for the window of {w.count} records at record "
                           f"{w.first}: stopped (rerun with --resume)")  # fmt: skip
        return rows

    for block in ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        for first, row in _rows(block):
            while first != window.first:  # the next window begins
                yield whole(current, window)
                window, current = next(expected, None), []
                if window is None or first < window.first:
                    raise RayError(f"Ray returned a window out of order (record {first}): stopped")
            current.append(row)
    yield whole(current, window)
    if next(expected, None) is not None:
        raise RayError("Ray returned fewer windows than were sent: stopped (rerun with --resume)")
