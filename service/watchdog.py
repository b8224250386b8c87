"""The batcher's watchdog: is the inference worker making progress?

``/health`` used to answer "alive" whenever the event loop did, also while the one inference thread sat
in a hung ONNX Runtime call or the batcher's gatherer task had died with every request queued behind
it, so an orchestrator never restarted the process. The :class:`~service.batching.Batcher` now reports
to a :class:`Watchdog` (a batch or the warm-up starts and ends on the worker; the gatherer stops), and
``/health`` and ``/ready`` ask it for a :meth:`Watchdog.verdict`. The worker is **stalled** when

* one call on a worker (a batch, the warm-up) has run longer than ``stall_s``; or
* rows have waited in the queue longer than ``stall_s`` and no call started or finished within
  ``stall_s`` (the gatherer is stuck); or
* the gatherer task ended while the batcher was running (a bug: nothing would ever run again).

A busy server is not stalled: under overload rows may wait long, but batches keep finishing. The
verdict is plain data computed on demand from timestamps; nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator


class Watchdog:
    """Progress of the inference worker (see the module docstring). ``clock`` must be the clock of
    the arrival times handed to :meth:`verdict` (the batcher's ``time.perf_counter``)."""

    def __init__(self, stall_s: float = 30.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.stall_s, self.clock = stall_s, clock
        self._calls: dict[object, float] = {}  # start times of the calls now on the workers
        self.last_activity = clock()  # a call started or finished then (or the watchdog was made)
        self.crash: str | None = None  # why the gatherer ended, if it did on its own

    @property
    def running_since(self) -> float | None:
        """When the longest-running call now on a worker started; None when no call is running."""
        return min(self._calls.values(), default=None)

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Around one call on a worker thread (several may run at once, one per worker)."""
        key = object()  # this call's own entry
        self._calls[key] = self.last_activity = self.clock()
        try:
            yield
        finally:
            del self._calls[key]
            self.last_activity = self.clock()

    def gatherer_done(self, task: asyncio.Task) -> None:
        """Done-callback of the batcher's gatherer task: a cancellation is a stop, anything else a crash."""
        if task.cancelled():
            return
        err = task.exception()
        self.crash = f"the batcher stopped: {type(err).__name__}: {err}" if err else "the batcher stopped"

    def verdict(self, *, oldest_queued: float | None) -> str | None:
        """Why the worker is stalled, or None when it is not. ``oldest_queued``: arrival time of the
        oldest row still queued (None: nothing queued)."""
        if self.crash is not None:
            return self.crash
        now = self.clock()
        if self.running_since is not None and now - self.running_since > self.stall_s:
            return (f"the inference worker has been in one call for {now - self.running_since:.0f} s "
                    f"(limit {self.stall_s:g} s): hung")  # fmt: skip
        idle = now - self.last_activity
        if oldest_queued is not None and now - oldest_queued > self.stall_s and idle > self.stall_s:
            return (f"requests have waited {now - oldest_queued:.0f} s and no batch started or finished "
                    f"for {idle:.0f} s (limit {self.stall_s:g} s)")  # fmt: skip
        return None
