"""Batches built on a background thread, ahead of the training step that needs them.

Collation (padding, dynamic masking, word segmentation for whole-word masking) is Python and numpy
work; PyTorch's kernels release the GIL, so a thread that prepares the next batches while the step
runs hides most of that cost. :class:`Prefetch` wraps any resumable :class:`training.loop.Batches`
and stays exactly resumable: its ``state_dict`` is the wrapped iterator's state *after the last batch
handed out*, not after the last one built, so ``N`` steps straight and ``k`` steps + resume +
``N - k`` steps see the same batches.
"""

from __future__ import annotations

import queue
import threading
from typing import Any


class Prefetch:
    """``depth`` batches of ``inner`` built ahead on a daemon thread (started by the first ``next``)."""

    _DONE = object()

    def __init__(self, inner: Any, depth: int = 4):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self.inner, self.depth = inner, depth
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._state: dict | None = None  # inner's state after the last batch handed out
        self._epoch: float | None = None

    # the Batches protocol ---------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._thread is None:
            self._start()
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        batch, self._state, self._epoch = item
        return batch

    def state_dict(self) -> dict:
        return self._state if self._state is not None else self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self._thread is not None:
            raise RuntimeError("Prefetch.load_state_dict after batches were drawn: load the state first")
        self.inner.load_state_dict(state)
        self._state = None

    @property
    def epoch(self) -> float:
        return self._epoch if self._epoch is not None else self.inner.epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.inner.steps_per_epoch

    # the producer -----------------------------------------------------------------------------

    def _start(self) -> None:
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = next(self.inner)
                item = (batch, self.inner.state_dict(), self.inner.epoch)
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # handed to the consumer, which raises it in the training thread
            self._queue.put(e)

    def close(self) -> None:
        """Stop the producer thread (the training process may also just exit: it is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
