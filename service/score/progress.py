"""What a scoring run reports: progress while it runs (a bar on a terminal, a log line otherwise) and
the :class:`Summary` at the end."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)


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


class _Rate(NoProgress):
    """records/s and ETA of this run (not counting what a resumed run found done)."""

    def start(self, *, total_bytes: int | None, done_bytes: int, done_records: int) -> None:
        self.total, self.bytes0, self.records0 = total_bytes, done_bytes, done_records
        self.t0 = time.monotonic()

    def rate(self, records: int) -> float:
        return (records - self.records0) / max(time.monotonic() - self.t0, 1e-9)

    def eta(self, bytes_read: int) -> str:
        done = bytes_read - self.bytes0
        if self.total is None or done <= 0:
            return "?"
        return _hms((self.total - bytes_read) * (time.monotonic() - self.t0) / done)


class LogProgress(_Rate):
    """One log line every ``interval`` seconds (stderr is not a terminal)."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval, self._last = interval, time.monotonic()

    def update(self, *, bytes_read: int, records: int, errors: int) -> None:
        if time.monotonic() - self._last < self.interval:
            return
        self._last = time.monotonic()
        share = f", {100 * bytes_read / self.total:.1f}% of the input" if self.total else ""
        log.info(
            "scored %d records (%d errors)%s, %.0f records/s, ETA %s",
            records, errors, share, self.rate(records), self.eta(bytes_read),
        )  # fmt: skip


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
        self._bar.update(
            self._task, completed=bytes_read, records=records, errors=errors, rate=self.rate(records),
            eta=self.eta(bytes_read),
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
