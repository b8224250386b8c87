"""Dynamic batching over HTTP: it changes no result, keeps order, refuses overload, drops the
work of clients that left, and windows long texts without losing or doubling an entity. And the
batcher alone: a lone request never waits for company; rows wait only for requests on their way."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from service.batching import Batcher
from service.core import Engine, Job, Limits, Seq
from tests.service.conftest import running, settings
from tests.service.fakes import fake_engine
from tests.service.test_http import assert_error, post, scrape

TEXTS = [
    "我爱北京天安门", "张三在上海工作", "中国银行", "李四是北京大学的人", "上海", "我", "一二三四五六七八九十",
    "北京天安门" * 30, "中国的人在上海工作了" * 12, "abc 北京 de", "二月三日", "张三和李四",
]  # fmt: skip


def safe_threshold(engine: Engine, texts: list[str], lo: float = 0.2, hi: float = 0.4) -> float:
    """A threshold in [lo, hi] far from every span score of these texts, so float noise of a
    differently padded batch cannot flip an entity."""
    everything = Engine(engine.runtime, engine.tokenizer, engine.manifest, limits=Limits(max_entities=10**8),
                        options=engine.options)  # fmt: skip
    spans = everything.run("ner", texts=texts, threshold=lo).entities
    scores = sorted({e.score for ents in spans for e in ents if e.score <= hi})
    edges = [lo, *scores, hi]
    gap, k = max((b - a, k) for k, (a, b) in enumerate(itertools.pairwise(edges)))
    assert gap > 1e-4
    return (edges[k] + edges[k + 1]) / 2


def request_sets(n: int) -> list[list[str]]:
    rng = np.random.default_rng(0)
    return [
        [TEXTS[k] for k in rng.choice(len(TEXTS), size=rng.integers(1, 4), replace=False)] for _ in range(n)
    ]


async def _burst(base: str, path: str, bodies: list[dict], timeout: float = 60) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        return await asyncio.gather(*(client.post(path, json=b) for b in bodies))


def key(entities: list[dict]) -> list[tuple]:
    return [(e["start"], e["end"], e["label"], e["text"]) for e in entities]


def test_concurrent_requests_equal_one_by_one(tiny_bundle, engine) -> None:
    threshold = safe_threshold(engine, TEXTS)
    sets = request_sets(50)
    with running(settings(bundle=tiny_bundle, max_wait_ms=20, batch_tokens=1024)) as base:
        single = {
            t: post(base, "/ner", {"texts": [t], "threshold": threshold}).json()["results"][0]["entities"]
            for t in TEXTS
        }
        before = scrape(base)
        responses = asyncio.run(_burst(base, "/ner", [{"texts": s, "threshold": threshold} for s in sets]))
        after = scrape(base)
        for texts, r in zip(sets, responses):
            assert r.status_code == 200, r.text
            results = r.json()["results"]
            assert len(results) == len(texts)
            for text, item in zip(texts, results):  # output order = input order
                assert key(item["entities"]) == key(single[text])
                assert np.allclose(
                    [e["score"] for e in item["entities"]], [e["score"] for e in single[text]], atol=1e-4
                )
        # and batching really happened: fewer batches than requests, some shared by several requests
        ner = (("task", "ner"),)
        n_batches = after["ropenlp_batch_requests_count"][ner] - before["ropenlp_batch_requests_count"][ner]
        n_requests = after["ropenlp_batch_requests_sum"][ner] - before["ropenlp_batch_requests_sum"][ner]
        assert n_batches < 50 and n_requests >= 50

        # the same for embeddings
        emb_single = {t: post(base, "/embed", {"texts": [t]}).json()["vectors"][0] for t in TEXTS}
        responses = asyncio.run(_burst(base, "/embed", [{"texts": s} for s in sets]))
        for texts, r in zip(sets, responses):
            assert np.allclose(r.json()["vectors"], [emb_single[t] for t in texts], atol=1e-5)


def test_long_text_windows_over_http(tiny_bundle, engine) -> None:
    """Small windows from the settings: an entity crossing a window boundary is found once, at the
    right offsets (fake model with known entities), and the real model's windows merge as core does."""
    fake, _ = fake_engine(tiny_bundle, ner_max_length=10, ner_stride=4)
    text = "我爱的人在是了天安门有和大北京的人是了我爱北京大学的人"
    with running(settings(), fake) as base:
        entities = post(base, "/ner", {"texts": ["张三", text]}).json()["results"][1]["entities"]
    assert key(entities) == [(7, 10, "LOC", "天安门"), (13, 15, "LOC", "北京"), (21, 23, "LOC", "北京"),
                             (21, 25, "ORG", "北京大学")]  # fmt: skip
    assert entities[1]["score"] == np.float32(10.06)  # the better of its two windows

    long = "中国的人在上海工作了" * 12
    windowed = Engine(engine.runtime, engine.tokenizer, engine.manifest, options={"ner_max_length": 12, "ner_stride": 5})
    threshold = safe_threshold(windowed, [long])
    with running(settings(bundle=tiny_bundle, ner_max_length=12, ner_stride=5)) as base:
        got = post(base, "/ner", {"texts": [long], "threshold": threshold}).json()["results"][0]["entities"]
        assert httpx.get(base + "/info").json()["tasks"]["ner"]["max_length"] == 12
    want = windowed.run("ner", texts=[long], threshold=threshold).entities[0]
    assert key(got) == [(e.start, e.end, e.label, e.text) for e in want]
    assert len({(e["start"], e["end"], e["label"]) for e in got}) == len(got)  # each reported once


def test_overload_is_refused_at_once_then_recovers(tiny_bundle) -> None:
    engine, _ = fake_engine(tiny_bundle, delay=0.3)
    with running(settings(max_queue=2, max_wait_ms=0), engine) as base:
        t0 = time.perf_counter()
        responses = asyncio.run(_burst(base, "/ner", [{"texts": ["北京", "张三"]}] * 20))
        statuses = [r.status_code for r in responses]
        assert statuses.count(200) >= 2 and statuses.count(429) >= 10, statuses
        assert set(statuses) <= {200, 429}
        for r in responses:
            if r.status_code == 429:
                assert_error(r, 429, "overloaded", limit=2)
                assert int(r.headers["retry-after"]) >= 1
        assert time.perf_counter() - t0 < 0.3 * 20  # refused, not queued
        r = post(base, "/ner", {"texts": ["北京"]})
        assert r.status_code == 200 and key(r.json()["results"][0]["entities"]) == [(0, 2, "LOC", "北京")]


def test_cancelled_request_is_dropped_before_inference(tiny_bundle) -> None:
    engine, runtime = fake_engine(tiny_bundle)
    with running(settings(max_wait_ms=0, inference_workers=1), engine) as base:  # B must wait in the queue
        runtime.gate = threading.Event()  # from now on the worker blocks until released
        runtime.entered.clear()
        first: list[httpx.Response] = []
        a = threading.Thread(target=lambda: first.append(post(base, "/ner", {"texts": ["北京"]})))
        a.start()
        assert runtime.entered.wait(10)  # A is in the model
        try:
            httpx.post(base + "/ner", json={"texts": ["张三和李四在上海"]}, timeout=0.5)
            raise AssertionError("B should have timed out")
        except httpx.TimeoutException:
            pass
        deadline = time.monotonic() + 10
        while scrape(base)["ropenlp_queue_requests"][()] != 1:  # B's cancellation reached the server
            assert time.monotonic() < deadline
            time.sleep(0.02)
        runtime.gate.set()
        runtime.gate = None
        a.join(10)
        assert first and first[0].status_code == 200
        b_ids = tuple(engine.tokenizer.encode("张三和李四在上海").ids.tolist())
        assert all(ids != b_ids for _, ids in runtime.rows), "B's row reached the model"
        deadline = time.monotonic() + 10
        while scrape(base).get("ropenlp_dropped_sequences_total", {}).get((), 0) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert post(base, "/ner", {"texts": ["北京"]}).status_code == 200


# --------------------------------------------------------------------------------------------
# When the gatherer waits (the Batcher alone, no HTTP, no model; no assertion on wall-clock time)
# --------------------------------------------------------------------------------------------

DAY_MS = 86_400_000.0  # a max_wait no test could sit out: finishing at all proves nobody waited for it


@dataclass(frozen=True)
class Req:
    """A request for the Recorder: ``rows`` rows of ``length`` tokens whose ids spell ``request``; with
    ``release``, preparing it waits for that event (the request stays 'being prepared'); ``fail``: then
    preparing it raises."""

    request: int
    rows: int = 1
    length: int = 4
    release: threading.Event | None = None
    fail: bool = False


class Recorder:
    """A core (prepare, run_batch, finish) that records the rows of each batch (each row's ids spell its
    request) and can hold the worker until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def prepare(self, name: str, q: Req) -> Job:
        if q.release is not None:
            assert q.release.wait(30)
        if q.fail:
            raise ValueError("invalid request")
        return Job(name, "ner", [Seq(np.full(q.length, q.request, dtype=np.int64)) for _ in range(q.rows)])

    def run_batch(self, task: str, seqs: list[Seq]) -> list[int]:
        self.batches.append([int(s.ids[0]) for s in seqs])
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return [int(s.ids[0]) for s in seqs]

    def finish(self, job: Job, outputs: list[int]) -> list[int]:
        return outputs


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def with_batcher(test: Callable[[Batcher, Recorder], Awaitable[None]], **kw) -> Recorder:
    recorder = Recorder()

    async def main() -> None:
        b = Batcher(recorder, **{"batch_tokens": 1024, "max_wait_ms": DAY_MS, "max_queue": 16, **kw})
        await b.start()
        try:
            await asyncio.wait_for(test(b, recorder), 30)
        finally:
            if recorder.gate is not None:
                recorder.gate.set()
            await b.stop()

    asyncio.run(main())
    return recorder


def test_lone_request_does_not_wait_for_max_wait() -> None:
    async def test(b: Batcher, rec: Recorder) -> None:
        assert b.wait_s([4], oldest_arrived=0.0, now=0.0) == 0.0  # nothing else admitted: run now
        result, _ = await b.execute("ner", Req(1, rows=2))
        assert result == [1, 1]
        result, _ = await b.execute("ner", Req(2))
        assert result == [2]

    assert with_batcher(test).batches == [[1, 1], [2]]


def test_waits_for_a_request_being_prepared() -> None:
    """Rows wait while another admitted request is still tokenizing, and then share its batch."""
    release = threading.Event()

    async def test(b: Batcher, rec: Recorder) -> None:
        slow = asyncio.create_task(b.execute("ner", Req(2, release=release)))
        await until(lambda: b.preparing == 1)
        fast = asyncio.create_task(b.execute("ner", Req(1)))
        await until(lambda: b.pending == 1)
        assert b.wait_s([4], oldest_arrived=0.0, now=0.0) > 0
        for _ in range(20):
            await asyncio.sleep(0)
        assert rec.batches == [] and b.pending == 1  # held back for company
        release.set()
        assert [r for r, _ in await asyncio.gather(fast, slow)] == [[1], [2]]

    assert with_batcher(test).batches == [[1, 2]]


def test_wait_is_bounded_by_max_wait_and_by_the_budget() -> None:
    release = threading.Event()

    async def bounded(b: Batcher, rec: Recorder) -> None:  # max_wait 1 ms: it does not wait for ever
        slow = asyncio.create_task(b.execute("ner", Req(2, release=release)))
        await until(lambda: b.preparing == 1)
        assert (await b.execute("ner", Req(1)))[0] == [1]
        assert b.preparing == 1  # the other one is still being prepared
        release.set()
        assert (await slow)[0] == [2]

    assert with_batcher(bounded, max_wait_ms=1).batches == [[1], [2]]

    release.clear()

    async def full(b: Batcher, rec: Recorder) -> None:  # no room for another row of this length: no wait
        assert b.wait_s([16, 16], oldest_arrived=0.0, now=0.0) == 0.0  # 16 x 3 > 40
        slow = asyncio.create_task(b.execute("ner", Req(2, release=release)))
        await until(lambda: b.preparing == 1)
        assert (await b.execute("ner", Req(1, rows=2, length=16)))[0] == [1, 1]
        release.set()
        await slow

    assert with_batcher(full, batch_tokens=40).batches == [[1, 1], [2]]


def test_rows_queued_while_the_worker_is_busy_share_the_next_batch() -> None:
    async def test(b: Batcher, rec: Recorder) -> None:
        rec.gate = threading.Event()
        first = asyncio.create_task(b.execute("ner", Req(1)))
        await until(rec.entered.is_set)  # the worker is busy with request 1
        rest = [asyncio.create_task(b.execute("ner", Req(k))) for k in (2, 3, 4)]
        await until(lambda: b.pending == 3)
        rec.gate.set()
        assert [(await t)[0] for t in (first, *rest)] == [[1], [2], [3], [4]]

    batches = with_batcher(test).batches
    assert batches[0] == [1] and sorted(batches[1]) == [2, 3, 4] and len(batches) == 2


def test_failed_or_cancelled_preparation_stops_the_wait() -> None:
    release = threading.Event()

    async def test(b: Batcher, rec: Recorder) -> None:
        bad = asyncio.create_task(b.execute("ner", Req(0, release=release, fail=True)))
        await until(lambda: b.preparing == 1)
        waiting = asyncio.create_task(b.execute("ner", Req(1)))
        await until(lambda: b.pending == 1)
        release.set()  # the other request fails in prepare: nothing is coming, run now
        assert (await waiting)[0] == [1]
        with pytest.raises(ValueError):
            await bad
        assert b.preparing == 0 and b.admitted == 0

    assert with_batcher(test).batches == [[1]]


class Pair(Recorder):
    """A core whose batches return only once two are on the workers at the same time."""

    def __init__(self, hold_s: float = 0.0) -> None:
        super().__init__()
        self.both = threading.Barrier(2, timeout=10)
        self.hold_s = hold_s

    def run_batch(self, task: str, seqs: list[Seq]) -> list[int]:
        out = super().run_batch(task, seqs)
        self.both.wait()  # BrokenBarrierError (a failed request) unless another batch runs meanwhile
        time.sleep(self.hold_s)  # both batches in the model together for this long
        return out


def test_two_workers_run_two_batches_at_once() -> None:
    """With ``workers=2`` a second batch starts while the first is still on its worker (one worker
    would leave the Barrier waiting: both requests would fail)."""
    core = Pair()

    async def main() -> list[list[int]]:
        b = Batcher(core, batch_tokens=1024, max_wait_ms=0, max_queue=16, workers=2)
        await b.start()
        try:
            first = asyncio.create_task(b.execute("ner", Req(1)))
            await until(core.entered.is_set)  # request 1 is on a worker, held at the barrier
            second = asyncio.create_task(b.execute("ner", Req(2)))
            return [r for r, _ in await asyncio.wait_for(asyncio.gather(first, second), 30)]
        finally:
            await b.stop()

    assert asyncio.run(main()) == [[1], [2]]
    assert core.batches == [[1], [2]]


def test_a_request_on_two_workers_at_once_has_consistent_timings() -> None:
    """One request's two rows in two batches that run at the same time: its inference time is the time
    any of them ran, not their sum, so its queue time is never negative (the x-queue-time header)."""
    core = Pair(hold_s=0.3)  # the sum of the two calls (>= 0.6 s) would exceed the request's own time

    async def main():
        b = Batcher(core, batch_tokens=4, max_wait_ms=0, max_queue=16, workers=2)  # one 4-token row per batch
        await b.start()
        try:
            t0 = time.perf_counter()
            result, timings = await asyncio.wait_for(b.execute("ner", Req(1, rows=2)), 30)
            return result, timings, time.perf_counter() - t0
        finally:
            await b.stop()

    result, t, total = asyncio.run(main())
    assert result == [1, 1] and core.batches == [[1], [1]]
    assert t.queue_s >= 0 and 0.3 <= t.inference_s <= total


class SecondHeld(Recorder):
    """A core whose first batch returns at once and whose later batches wait for ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()

    def run_batch(self, task: str, seqs: list[Seq]) -> list[int]:
        first = not self.batches
        out = super().run_batch(task, seqs)
        if not first:
            assert self.held.wait(30)
        return out


def test_stop_fails_a_request_whose_other_batch_is_still_running() -> None:
    """One request's two rows on two workers: the first batch has finished, the second is still on its
    worker when the server stops. The request fails with NotReady (it does not hang): it is still running."""
    from service.errors import NotReady

    core = SecondHeld()

    async def main() -> BaseException | None:
        b = Batcher(core, batch_tokens=4, max_wait_ms=0, max_queue=16, workers=2)  # one 4-token row per batch
        await b.start()
        request = asyncio.create_task(b.execute("ner", Req(1, rows=2)))
        await until(lambda: len(core.batches) == 2)  # the first returned, the second is held
        await asyncio.sleep(0.05)  # the first batch's results are in
        try:
            await b.stop(timeout_s=0.1)
            done, _ = await asyncio.wait({request}, timeout=5)
            return request.exception() if done else None
        finally:
            core.held.set()

    assert isinstance(asyncio.run(main()), NotReady)


def test_workers_must_be_positive() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Batcher(Recorder(), batch_tokens=1024, max_wait_ms=0, max_queue=1, workers=0)


def test_a_disconnect_while_the_work_runs_is_a_clean_client_closed() -> None:
    """The client leaves while its request is in flight (e.g. in a model call on a second worker): the
    work is cancelled and awaited until it has unwound, and the answer is ClientClosedRequest, not a
    500 from reading the result of a task still cancelling."""
    from service.errors import ClientClosedRequest
    from service.http.service import _cancel_on_disconnect

    async def main() -> None:
        started, unwound = asyncio.Event(), asyncio.Event()

        async def work() -> None:
            started.set()
            try:
                await asyncio.sleep(3600)
            finally:
                await asyncio.sleep(0)  # unwinding takes a turn of the loop
                unwound.set()

        class Leaving:
            async def receive(self) -> dict:
                await started.wait()
                return {"type": "http.disconnect"}

        with pytest.raises(ClientClosedRequest):
            await _cancel_on_disconnect(Leaving(), work())
        assert unwound.is_set()

    asyncio.run(main())
