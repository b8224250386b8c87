"""Dynamic batching for the server: the sequences of concurrent requests share batches.

Flow of one request (:meth:`Batcher.execute` of an operation's name and typed query)::

    admit (or Overloaded at once) -> core.prepare in a thread (validate + tokenize)
    -> submit its rows to the queue -> the gatherer groups rows of several requests into one batch
    -> one of ``workers`` inference threads runs core.run_batch -> rows go back into each request's own order
    -> core.finish (merge windows / dot products)

Only data crosses the queue and the threads (the query, the job, the rows): the batcher calls its
:class:`Core` (``service.core.Engine``) by name, never a closure handed in by the caller.

* Admission is bounded: at most ``max_queue`` requests are admitted (queued or running); one more
  gets :class:`Overloaded` immediately (HTTP 429 + Retry-After) instead of an unbounded queue.
* When a worker is free, the gatherer runs what is waiting at once — unless other admitted
  requests are still being prepared (tokenized) and the waiting rows leave room for more in the
  token budget: then it waits for them to join, at most ``max_wait_ms`` after the oldest waiting row
  arrived (:meth:`Batcher.wait_s`). A lone request is never delayed; under load batches still fill,
  because requests that arrive while every worker is busy accumulate until one is free. A batch always
  holds the oldest row (no starvation) plus the queued rows closest to it in length
  (:func:`models.batches.select_batch`); its padded cost (longest x count) stays within ``batch_tokens``
  (a row longer than the budget runs alone) and its padding within ``MAX_PADDING`` of that cost, so a
  batch costs about its real tokens; rows of other lengths form the next batches.
* Inference runs on ``workers`` threads, never on the event loop; each runs one batch at a time,
  so up to ``workers`` batches run at once on one ONNX Runtime session (``InferenceSession.run`` is
  thread-safe and releases the GIL). One worker per core with one intra-op thread each keeps every
  core busy under load without the per-operator synchronisation of intra-op threads
  (docs/performance.md, "Threads"). A row's numbers do not depend on which worker or batch runs it.
* A request whose client went away is cancelled: its future is cancelled, and its rows still in the
  queue are dropped before they reach the model.
* Every call on the worker and the gatherer's end are reported to a :class:`~service.watchdog.Watchdog`
  (``/health`` asks it whether the worker still makes progress); :meth:`Batcher.stop` waits for the
  worker a bounded time, so a hung model call cannot hold up the process's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from models.batches import MAX_PADDING, padded_cost, select_batch
from service.errors import InferenceError, NotReady, Overloaded
from service.jobs import Job, Seq
from service.watchdog import Watchdog

log = logging.getLogger(__name__)

R = TypeVar("R")


class Core(Protocol):
    """What the batcher runs (``service.core.Engine`` implements it)."""

    def prepare(self, name: str, query: Any) -> Job: ...

    def run_batch(self, task: str, seqs: list[Seq]) -> list[Any]: ...

    def finish(self, job: Job, outputs: list[Any]) -> Any: ...


class BatchObserver(Protocol):
    """Where the batcher reports what it does (``service.metrics.Metrics`` implements it)."""

    def observe_batch(
        self, task: str, *, requests: int, sequences: int, tokens: int, seconds: float
    ) -> None: ...

    def set_queue(self, *, requests: int, sequences: int) -> None: ...

    def observe_dropped(self, sequences: int) -> None: ...


@dataclass(frozen=True)
class Timings:
    tokenize_s: float
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Ticket:
    """One submitted request: its future and the slots its rows' outputs go into."""

    task: str
    future: asyncio.Future
    results: list[Any]
    remaining: int
    submitted: float
    calls: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of each batch with its rows

    @property
    def inference_s(self) -> float:
        """Seconds in which at least one of its batches ran (batches on two workers may overlap)."""
        total, end = 0.0, float("-inf")
        for a, b in sorted(self.calls):
            if b > end:
                total += b - max(a, end)
                end = b
        return total


@dataclass(eq=False)
class _Item:
    ticket: _Ticket
    index: int  # position of this row in its request
    seq: Seq
    arrived: float


class Batcher:
    """Bounded queue + gatherer + ``workers`` inference threads (see the module docstring)."""

    def __init__(
        self,
        core: Core,
        *,
        batch_tokens: int,
        max_wait_ms: float,
        max_queue: int,
        retry_after_s: float = 1.0,
        observer: BatchObserver | None = None,
        watchdog: Watchdog | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._core = core
        self.workers = workers
        self.watchdog = watchdog if watchdog is not None else Watchdog()
        self._budget, self._max_wait = batch_tokens, max_wait_ms / 1e3
        self._max_queue, self._retry_after = max_queue, retry_after_s
        self._observer = observer
        self._pending: dict[str, list[_Item]] = {}
        self._admitted = 0
        self._preparing = 0  # admitted requests not yet submitted: their rows may still join a batch
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._free: asyncio.Semaphore | None = None  # workers not running a batch
        self._batches: dict[asyncio.Task, list[_Ticket]] = {}  # batches now running, with their requests
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ropenlp-inference")

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._free = asyncio.Semaphore(self.workers)
        self._loop_task = asyncio.create_task(self._gather_loop(), name="ropenlp-batcher")
        self._loop_task.add_done_callback(self.watchdog.gatherer_done)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Fail what is still queued, then wait at most ``timeout_s`` for the calls now on the workers."""
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tickets = {t for running in self._batches.values() for t in running}
        tickets |= {it.ticket for items in self._pending.values() for it in items}
        for b in list(self._batches):  # their calls go on in the executor (joined below); their requests fail
            b.cancel()
        for t in tickets:
            if not t.future.done():
                t.future.set_exception(NotReady("the server is shutting down"))
        self._pending.clear()
        # joined from a daemon thread: a hung call must hold up neither the event loop nor its shutdown
        joined = asyncio.get_running_loop().create_future()
        threading.Thread(target=_join, args=(self._executor, joined), daemon=True).start()
        try:
            await asyncio.wait_for(joined, timeout_s)
        except TimeoutError:
            log.error("the inference worker did not finish its call within %.1f s; exiting without it", timeout_s)

    async def run_in_worker(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn`` on an inference thread (the warm-up: before the first request is admitted)."""
        with self.watchdog.busy():
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # -- requests -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_queue`` request slots, or raise :class:`Overloaded` at once."""
        if self._admitted >= self._max_queue:
            raise Overloaded(
                f"{self._admitted} requests in progress (limit {self._max_queue}); retry later",
                retry_after=self._retry_after,
                limit=self._max_queue,
            )
        self._admitted += 1
        self._report_queue()
        try:
            yield
        finally:
            self._admitted -= 1
            self._report_queue()

    async def execute(self, name: str, query: Any) -> tuple[Any, Timings]:
        """Admit, prepare (in a thread), batch, finish: the whole life of one request for operation ``name``."""
        with self.admit():
            self._preparing += 1
            try:
                job = await asyncio.to_thread(self._core.prepare, name, query)
            finally:  # submitted next, or failed / cancelled: either way the gatherer must look again
                self._preparing -= 1
                if self._wake is not None:
                    self._wake.set()
            outputs, queue_s, inference_s = await self.submit(job.task, job.seqs)
            result = self._core.finish(job, outputs)
        return result, Timings(job.tokenize_s, queue_s, inference_s)

    async def submit(self, task: str, seqs: Sequence[Seq]) -> tuple[list[Any], float, float]:
        """Queue one request's rows; return ``(outputs in row order, queue seconds, inference seconds)``."""
        if self._loop_task is None:
            raise NotReady("the batcher is not running", retry_after=self._retry_after)
        now = time.perf_counter()
        ticket = _Ticket(task, asyncio.get_running_loop().create_future(), [None] * len(seqs), len(seqs), now)
        if not seqs:
            return [], 0.0, 0.0
        self._pending.setdefault(task, []).extend(_Item(ticket, k, s, now) for k, s in enumerate(seqs))
        self._report_queue()
        self._wake.set()
        await ticket.future  # cancelled with the caller: the gatherer then skips its rows
        total = time.perf_counter() - ticket.submitted
        inference = ticket.inference_s
        return ticket.results, total - inference, inference

    # -- the gatherer -----------------------------------------------------------------------------

    def _drop_done(self) -> None:
        """Forget rows of requests already answered, failed or cancelled."""
        dropped = 0
        for task, items in self._pending.items():
            keep = [it for it in items if not it.ticket.future.done()]
            dropped += len(items) - len(keep)
            self._pending[task] = keep
        if dropped:
            if self._observer is not None:
                self._observer.observe_dropped(dropped)
            self._report_queue()

    async def _next_batch(self) -> tuple[str, list[_Item]]:
        while True:
            self._drop_done()
            heads = [items[0] for items in self._pending.values() if items]
            if not heads:
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = min(heads, key=lambda it: it.arrived)
            task = oldest.ticket.task
            items = self._pending[task]
            wait = self.wait_s([len(it.seq) for it in items], oldest.arrived, time.perf_counter())
            if wait > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            chosen = set(  # items[0] is the oldest
                select_batch([len(it.seq) for it in items], 0, self._budget, max_padding=MAX_PADDING)
            )
            batch = [items[k] for k in sorted(chosen, key=lambda k: len(items[k].seq))]
            self._pending[task] = [it for k, it in enumerate(items) if k not in chosen]
            self._report_queue()
            return task, batch

    def wait_s(self, lengths: Sequence[int], oldest_arrived: float, now: float) -> float:
        """How much longer rows of these ``lengths`` (the oldest arrived at ``oldest_arrived``) should
        wait for company before they run, with a worker free; 0: run now.

        Waiting can only help while other admitted requests are still being prepared (their rows
        may join) and the waiting rows leave room for one more row as long as their longest. Rows
        that queued while the workers were busy have waited already; a lone request does not wait.
        """
        if self._preparing == 0 or max(lengths) * (len(lengths) + 1) > self._budget:
            return 0.0
        return max(0.0, oldest_arrived + self._max_wait - now)

    async def _gather_loop(self) -> None:
        while True:
            await self._free.acquire()  # a worker is free: form its batch from what is queued now
            try:
                task, batch = await self._next_batch()
            except BaseException:
                self._free.release()
                raise
            tickets = list(dict.fromkeys(it.ticket for it in batch))  # the requests in this batch
            b = asyncio.create_task(self._run_guarded(task, batch, tickets), name="ropenlp-batch")
            self._batches[b] = tickets  # a request split over two running batches stays in both
            b.add_done_callback(self._batch_done)

    def _batch_done(self, b: asyncio.Task) -> None:
        self._batches.pop(b, None)

    async def _run_guarded(self, task: str, batch: list[_Item], tickets: list[_Ticket]) -> None:
        try:
            await self._run(task, batch, tickets)
        except Exception as e:  # the model (or a bug) failed this batch: fail its requests, keep serving
            log.error("%s batch of %d rows failed: %s", task, len(batch), e, exc_info=e)
            for t in tickets:
                if not t.future.done():
                    t.future.set_exception(InferenceError())
        finally:
            self._free.release()

    async def _run(self, task: str, batch: list[_Item], tickets: list[_Ticket]) -> None:
        """One batch on a worker thread; each row's output into its request's slot."""
        t0 = time.perf_counter()
        with self.watchdog.busy():
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._core.run_batch, task, [it.seq for it in batch]
            )
        t1 = time.perf_counter()
        seconds = t1 - t0
        for t in tickets:
            t.calls.append((t0, t1))
        for it, out in zip(batch, outputs, strict=True):
            t = it.ticket
            if t.future.done():  # cancelled meanwhile, or failed in another batch
                continue
            t.results[it.index] = out
            t.remaining -= 1
            if t.remaining == 0:
                t.future.set_result(None)
        if self._observer is not None:
            tokens = padded_cost([len(it.seq) for it in batch])
            self._observer.observe_batch(
                task, requests=len(tickets), sequences=len(batch), tokens=tokens, seconds=seconds
            )

    def _report_queue(self) -> None:
        if self._observer is not None:
            self._observer.set_queue(requests=self._admitted, sequences=self.pending)

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def preparing(self) -> int:
        """Admitted requests still being prepared (validated, tokenized), not yet submitted."""
        return self._preparing

    @property
    def oldest_queued(self) -> float | None:
        """Arrival time (``time.perf_counter``) of the oldest row still queued; None when none is."""
        heads = (next((it.arrived for it in items if not it.ticket.future.done()), None)
                 for items in self._pending.values())  # each task's rows stay in arrival order
        return min((t for t in heads if t is not None), default=None)

    @property
    def pending(self) -> int:
        """Rows queued for the worker (not yet in a batch)."""
        return sum(len(items) for items in self._pending.values())


def _join(executor: ThreadPoolExecutor, joined: asyncio.Future) -> None:
    """Shut the worker down (queued calls cancelled, the running one awaited); then resolve ``joined``."""
    executor.shutdown(wait=True, cancel_futures=True)
    loop = joined.get_loop()
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
        loop.call_soon_threadsafe(lambda: joined.done() or joined.set_result(None))
