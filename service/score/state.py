"""The state file of a scoring run, ``OUTPUT.state``: its format, in one place.

JSON lines, appended and fsync'ed by :class:`service.score.outputs.Sink` and read back by
:mod:`service.score.resume`:

* ``{"event": "start", "version": 1, "time": ..., "fingerprint": {...}}``: the run's fingerprint;
* ``{"event": "checkpoint", "time": ..., **Position}``: how far the output goes, written only after the
  output (and the ``.npy``) were fsync'ed, so a checkpoint never claims more than is on disk;
* ``{"event": "resume", "time": ..., "records": n}``: a resumed run went on after n records;
* ``{"event": "complete", "time": ..., **summary}``: the run finished.

Read top to bottom: :class:`Position` (what a checkpoint records) -> the entries -> :class:`StateFile`
(the file as read) -> :class:`Point` (where a resumed run goes on).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.score.errors import InputOutputError, ResumeError

STATE_VERSION = 1


@dataclass(frozen=True)
class Position:
    """How far the output goes: what a checkpoint records."""

    records: int = 0  # output lines
    errors: int = 0  # error lines among them
    out_bytes: int = 0
    in_offset: int = 0  # input position after the last of them (0: the start)
    in_line: int = 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def start_entry(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {"event": "start", "version": STATE_VERSION, "time": _now(), "fingerprint": fingerprint}


def checkpoint_entry(at: Position) -> dict[str, Any]:
    return {"event": "checkpoint", "time": _now(), **dataclasses.asdict(at)}


def resume_entry(records: int) -> dict[str, Any]:
    return {"event": "resume", "time": _now(), "records": records}


def complete_entry(summary: dict[str, Any]) -> dict[str, Any]:
    return {"event": "complete", "time": _now(), **summary}


def encode(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, ensure_ascii=False).encode("utf-8") + b"\n"


@dataclass
class StateFile:
    """``OUTPUT.state`` as read: ``start`` (the fingerprint), the last ``checkpoint``, ``complete``."""

    path: Path
    start: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None  # the last one
    complete: dict[str, Any] | None = None
    valid_bytes: int = 0  # up to the end of the last complete entry (a torn one after it is cut on resume)

    @classmethod
    def read(cls, path: Path) -> StateFile:
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


@dataclass(frozen=True)
class Point:
    at: Position  # the output kept
    checkpoint_records: int = 0  # records up to the checkpoint the input can be seeked to
    tail_lines: tuple[int, ...] = ()  # input line of each kept output line after that checkpoint
    complete: bool = False  # the state file marks the run complete and the output holds it all
    state_bytes: int = 0  # the state file's valid part (a torn entry after it is cut)
