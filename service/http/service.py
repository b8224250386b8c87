"""The service object of one app: settings, metrics, engine, batcher, health and readiness.

Routes receive it by dependency injection (``service: Service``, provided by the app factory); it
runs each request's typed query through the batcher by the operation's name.

Health (``/health``): the process answers and its inference worker makes progress (the batcher's
:class:`~service.watchdog.Watchdog`); a stalled worker is :class:`Unhealthy` (503), which tells an
orchestrator to restart it. Readiness (``/ready``): loaded, warmed up and healthy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from litestar import Request

import ropenlp
from service.batching import Batcher, Timings
from service.core import Engine
from service.errors import ClientClosedRequest, NotReady, Unhealthy
from service.metrics import Metrics
from service.settings import Settings
from service.watchdog import Watchdog

log = logging.getLogger(__name__)
R = TypeVar("R")


class Service:
    """Settings, metrics, engine, batcher and readiness of one app."""

    def __init__(self, settings: Settings, engine: Engine | None) -> None:
        self.settings, self.engine = settings, engine
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.ready, self.error = False, None
        self.started = time.perf_counter()
        self.warm_up_ms: float | None = None
        self._warm: asyncio.Task | None = None

    async def start(self) -> None:
        s = self.settings
        if self.engine is None:
            self.engine = await asyncio.to_thread(Engine.from_settings, s)
        self.batcher = Batcher(
            self.engine,
            batch_tokens=s.batch_tokens,
            max_wait_ms=s.max_wait_ms,
            max_queue=s.max_queue,
            retry_after_s=s.retry_after_s,
            observer=self.metrics,
            watchdog=Watchdog(s.watchdog_s),
            workers=s.workers,
        )
        await self.batcher.start()
        info = self.engine.info()
        precision = ",".join(f"{k}={v}" for k, v in info["precision"].items())
        self.metrics.info.labels(info["name"], info["provider"], precision, ropenlp.__version__).set(1)
        self._warm = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            seconds = await self.batcher.run_in_worker(self.engine.warm_up)
        except Exception as e:
            self.error = f"warm-up failed: {type(e).__name__}: {e}"
            log.error("%s", self.error, exc_info=e)
            return
        self.warm_up_ms = seconds * 1e3
        self.ready = True
        self.metrics.ready.set(1)
        log.info(
            "ready: bundle %s on %s, %d inference worker(s) x %d intra-op thread(s), warm-up %.0f ms, "
            "%.0f ms after start",
            self.engine.manifest.name,
            self.engine.info()["provider"],
            self.batcher.workers,
            self.settings.intra_op_threads,
            self.warm_up_ms,
            (time.perf_counter() - self.started) * 1e3,
        )

    async def stop(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        if self._warm is not None:
            self._warm.cancel()
        if self.batcher is not None:
            await self.batcher.stop(timeout_s=self.settings.drain_s)

    def stalled(self) -> str | None:
        """Why the inference worker makes no progress (the watchdog's verdict), or None."""
        if self.batcher is None:
            return None
        return self.batcher.watchdog.verdict(oldest_queued=self.batcher.oldest_queued)

    def unhealthy(self) -> Unhealthy | None:
        reason = self.stalled()
        return None if reason is None else Unhealthy(f"unhealthy: {reason}")

    def not_ready(self) -> NotReady:
        reason = self.stalled() or self.error or "the model is loading / warming up"
        return NotReady(f"not ready: {reason}", retry_after=self.settings.retry_after_s)

    async def infer(self, request: Request, name: str, query: Any) -> tuple[Any, Timings]:
        """Run operation ``name`` on ``query`` through the batcher; give up (and drop its queued work) if the
        client leaves."""
        if not self.ready or self.stalled():
            raise self.not_ready()
        result, t = await _cancel_on_disconnect(request, self.batcher.execute(name, query))
        route = request.scope.get("path_template", request.url.path)
        self.metrics.observe_stages(route, tokenize_s=t.tokenize_s, queue_s=t.queue_s, inference_s=t.inference_s)
        return result, t


async def _wait_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _cancel_on_disconnect(request: Request, work: Awaitable[R]) -> R:
    """Await ``work`` unless the client disconnects first (then cancel it: its queued rows are skipped)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        if not task.done():
            task.cancel()
    if not task.done():  # cancelled just now: let it unwind (its queued rows are then skipped)
        await asyncio.wait({task})
    if task.cancelled():
        raise ClientClosedRequest("the client closed the connection; its work was dropped")
    return task.result()
