"""``--resume``: check that nothing changed, repair the output, find where to go on.

The state file ``OUTPUT.state`` (JSON lines, written by :class:`service.score.outputs.Sink`) holds the
run's fingerprint (task, format, fields, threshold, decode, ``--npy`` path, bundle manifest hash and
precision, the engine limits that change results, and the input's path, size, mtime and SHA-256 of
its first 64 KiB) and checkpoints (records and error lines written, output bytes, input byte offset
and line after the last record). On resume the fingerprint must match (else a clear refusal listing
what changed); the output is cut back to the last checkpoint plus every complete, parseable line
after it (a torn or garbled tail is truncated); each kept line after the checkpoint must name the
input line the re-read input gives for it; the input is seeked to the checkpoint's offset (stdin:
re-read and skipped) and scoring goes on. Windows are aligned to record numbers (multiples of
``window``), so a resumed run batches exactly as an uninterrupted one and writes the same bytes. A
completed run is marked in the state file: resuming it again does nothing. Output ``-`` (stdout)
cannot be resumed.

What may change on resume: ``--window``, ``--batch-tokens``, threads, ``--max-errors``, progress and
fsync flags (none changes a result beyond float rounding of differently padded batches).

Read top to bottom: the fingerprint -> the earlier run's state file (its format:
:mod:`service.score.state`) -> :func:`resume_point` -> :func:`skip_done` (the records already in the output).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from service.core import Engine
from service.score.errors import InputOutputError, ResumeError
from service.score.inputs import Record, Source
from service.score.options import Plan, ScoreOptions
from service.score.outputs import Npy
from service.score.state import Point, Position, StateFile

log = logging.getLogger(__name__)


def fingerprint(engine: Engine, o: ScoreOptions, plan: Plan, source: Source) -> dict[str, Any]:
    """What must not change between a run and its resumption (results or the input's identity)."""
    manifest_hash = hashlib.sha256(engine.manifest.model_dump_json().encode()).hexdigest()
    return {
        "task": o.task,
        "format": plan.format,
        "fields": list(plan.fields),
        "id_field": plan.id_field,
        "header": plan.header,
        "threshold": o.threshold,
        "decode": o.decode,
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
            **engine.settings(),  # the tasks' effective settings (e.g. NER windows)
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


# --------------------------------------------------------------------------------------------
# The earlier run's state file
# --------------------------------------------------------------------------------------------


def _matching_state(o: ScoreOptions, fingerprint: dict[str, Any]) -> StateFile | None:
    """The state file of the earlier run (None: there was none), which must have the same fingerprint."""
    out, state_path = Path(o.output), o.state_path
    if not state_path.exists():
        if out.exists() and out.stat().st_size > 0:
            raise ResumeError(
                f"cannot resume: {out} exists but its state file {state_path} does not "
                "(was it written by another command?); start over with --overwrite"
            )
        log.info("--resume: no earlier run of this output (%s), starting from the beginning", state_path)
        return None
    state = StateFile.read(state_path)
    changed = _differences(state.start["fingerprint"], fingerprint)
    if changed:
        raise ResumeError(
            "cannot resume: the arguments, the bundle or the input changed since the run that wrote "
            f"{out} ({'; '.join(changed)}); rerun with the original arguments and input, or start over "
            "with --overwrite"
        )
    if fingerprint["input"]["path"] == "-":
        log.warning("--resume from stdin: the input cannot be checked; it must be the same stream as before")
    return state


# --------------------------------------------------------------------------------------------
# Where to go on
# --------------------------------------------------------------------------------------------


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


def _output_tail(o: ScoreOptions, cp_bytes: int) -> tuple[list[tuple[int, int, bool]], int]:
    """The output's complete lines after the checkpoint's ``cp_bytes`` (:func:`_scan_tail`), after
    checking that the output still holds what the checkpoint says it wrote."""
    out = Path(o.output)
    if not out.exists():
        raise ResumeError(
            f"cannot resume: {out} is gone but {o.state_path} remains; start over with --overwrite"
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
            return _scan_tail(f, cp_bytes)
    except OSError as e:
        raise InputOutputError(f"cannot read {out} to resume it: {e.strerror or e}") from None


def resume_point(o: ScoreOptions, fingerprint: dict[str, Any], dim: int | None) -> Point | None:
    """Where a resumed run goes on; None when there is nothing to resume (a fresh run then)."""
    state = _matching_state(o, fingerprint)
    if state is None:
        return None
    cp = state.checkpoint or {}
    cp_records, cp_bytes = cp.get("records", 0), cp.get("out_bytes", 0)
    tail, torn = _output_tail(o, cp_bytes)
    done = cp_records + len(tail)
    if o.npy is not None:
        npy_rows = Npy.rows_in(Path(o.npy), dim) if Path(o.npy).exists() else 0
        if npy_rows < cp_records:
            raise ResumeError(
                f"cannot resume: {o.npy} has {npy_rows} rows, fewer than the {cp_records} checkpointed; "
                "start over with --overwrite"
            )
        if npy_rows < done:
            log.warning("%s: %d rows for %d output lines: going on after %d", o.npy, npy_rows, done, npy_rows)
        done = min(done, npy_rows)
    tail = tail[: done - cp_records]
    out = Path(o.output)
    if torn:
        log.warning("%s: cutting a torn or garbled tail of %d bytes after the last complete line", out, torn)
    log.info(
        "resuming %s after %d records (%d from the checkpoint, %d complete lines after it)",
        out, done, cp_records, len(tail),
    )  # fmt: skip
    at = Position(
        records=done,
        errors=cp.get("errors", 0) + sum(err for _, _, err in tail),
        out_bytes=tail[-1][1] if tail else cp_bytes,
        in_offset=cp.get("in_offset", 0),
        in_line=cp.get("in_line", 0),
    )
    return Point(
        at=at,
        checkpoint_records=cp_records,
        tail_lines=tuple(line for line, _, _ in tail),
        complete=state.complete is not None and state.complete.get("records") == done and not torn,
        state_bytes=state.valid_bytes,
    )


def skip_done(records: Iterator[Record], point: Point, seeked: bool) -> Point:
    """Skip the records already in the output, checking each kept tail line names the same input line;
    the point with the input position after the last of them (a later checkpoint must not record the
    older position of the checkpoint it was resumed from)."""
    n = point.at.records - (point.checkpoint_records if seeked else 0)
    first_tail = n - len(point.tail_lines)
    rec = None
    for k in range(n):
        rec = next(records, None)
        if rec is None:
            raise ResumeError(
                f"cannot resume: the input ends before the {point.at.records} records already scored"
            )
        if k >= first_tail and rec.line != point.tail_lines[k - first_tail]:
            raise ResumeError(
                f"cannot resume: output line {k + 1 + (point.at.records - n)} is for input line "
                f"{point.tail_lines[k - first_tail]}, but that record is on input line {rec.line} now"
            )
    if rec is None:
        return point
    return dataclasses.replace(
        point, at=dataclasses.replace(point.at, in_offset=rec.end, in_line=rec.end_line)
    )
