"""The batcher's watchdog: its verdicts on a clock the test moves, then on a real batcher whose model hangs."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import Batcher
from service.watchdog import Watchdog
from tests.service.fakes import fake_engine


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_verdicts() -> None:
    clock = Clock()
    dog = Watchdog(10, clock)
    assert dog.verdict(oldest_queued=None) is None
    with dog.busy():
        clock.now += 9
        assert dog.verdict(oldest_queued=95.0) is None  # a long batch, within the bound
        clock.now += 2
        assert "hung" in dog.verdict(oldest_queued=None)  # one call past the bound
    assert dog.verdict(oldest_queued=None) is None  # it returned: fine again
    clock.now += 60  # idle for a minute, then a request arrives: not stalled
    assert dog.verdict(oldest_queued=clock.now - 1) is None
    clock.now += 20  # ... but nothing picked it up for 21 s
    assert "no batch started or finished" in dog.verdict(oldest_queued=clock.now - 21)
    with dog.busy():  # overload: rows wait long, yet batches keep running
        clock.now += 1
    assert dog.verdict(oldest_queued=clock.now - 50) is None


def test_concurrent_calls_the_oldest_counts() -> None:
    """Two workers: the verdict follows the call that has run longest, until it returns."""
    clock = Clock()
    dog = Watchdog(10, clock)
    with dog.busy():
        clock.now += 8
        with dog.busy():
            assert dog.running_since == 100.0
            clock.now += 3
            assert "in one call for 11 s" in dog.verdict(oldest_queued=None)
        assert dog.running_since == 100.0  # the younger call returned; the old one still runs
    assert dog.running_since is None and dog.verdict(oldest_queued=None) is None
    with dog.busy():
        with dog.busy():
            pass
        clock.now += 11
        assert "hung" in dog.verdict(oldest_queued=None)  # the younger one's return does not hide it


def test_a_dead_gatherer_is_a_crash_and_a_stop_is_not() -> None:
    async def main() -> tuple[str | None, str | None]:
        async def boom() -> None:
            raise RuntimeError("bug")

        dog = Watchdog(10)
        crashed = asyncio.create_task(boom())
        await asyncio.gather(crashed, return_exceptions=True)
        dog.gatherer_done(crashed)
        crash = dog.verdict(oldest_queued=None)
        calm = Watchdog(10)
        stopped = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        stopped.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
        calm.gatherer_done(stopped)
        return crash, calm.verdict(oldest_queued=None)

    crash, stop = asyncio.run(main())
    assert crash == "the batcher stopped: RuntimeError: bug" and stop is None


@pytest.mark.parametrize("broken", ["hung model call", "dead gatherer"])
def test_batcher_reports_a_stalled_worker_and_stops_in_bounded_time(tiny_bundle, broken) -> None:
    engine, runtime = fake_engine(tiny_bundle)

    async def main() -> tuple[str | None, str | None, float]:
        batcher = Batcher(engine, batch_tokens=1024, max_wait_ms=0, max_queue=8, watchdog=Watchdog(0.3))
        await batcher.start()
        await batcher.execute("ner", engine.query("ner", texts=["北京"]))
        before = batcher.watchdog.verdict(oldest_queued=batcher.oldest_queued)
        if broken == "hung model call":
            runtime.gate = threading.Event()  # the next call blocks until the test ends
        else:
            batcher._loop_task.cancel()  # noqa: SLF001 - a gatherer that stopped: rows queue and nothing runs
        request = asyncio.create_task(batcher.execute("ner", engine.query("ner", texts=["张三"])))
        await asyncio.sleep(0.6)
        after = batcher.watchdog.verdict(oldest_queued=batcher.oldest_queued)
        t0 = time.perf_counter()
        await batcher.stop(timeout_s=0.5)
        request.cancel()
        return before, after, time.perf_counter() - t0

    try:
        before, after, stop_s = asyncio.run(main())
    finally:
        if runtime.gate is not None:
            runtime.gate.set()
    assert before is None
    assert after is not None and ("hung" if broken == "hung model call" else "no batch started") in after, after
    assert stop_s < 2.0
