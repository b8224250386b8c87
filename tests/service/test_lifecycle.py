"""The service as an orchestrator sees it, on real processes: SIGTERM drains what was accepted, and a stuck
inference worker turns ``/health`` and ``/ready`` into 503 (``tests/service/fake_server.py``: the
production server over a fake model that is slow, or hangs on a chosen character)."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.servers import ServerProcess, server_process

pytestmark = pytest.mark.slow


def fake_server(bundle, log, *args: str, **env: str):
    return server_process(["-m", "tests.service.fake_server", str(bundle), *args], log,
                          env={f"ROPENLP_{k.upper()}": v for k, v in env.items()})  # fmt: skip


def queued(server: ServerProcess) -> float:
    for line in httpx.get(server.base + "/metrics", timeout=5).text.splitlines():
        if line.startswith("ropenlp_queue_requests "):
            return float(line.split()[1])
    raise AssertionError("no ropenlp_queue_requests in /metrics")


def wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def test_sigterm_answers_every_accepted_request_then_exits(tiny_bundle, tmp_path) -> None:
    n = 16
    with fake_server(tiny_bundle, tmp_path / "server.log", "--delay", "3.0", drain_s="60") as server:
        texts = ["张三在北京", "李四去上海", "中国银行", "我爱北京天安门"]
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(httpx.post, server.base + "/ner", json={"texts": [texts[k % 4] * (1 + k)]},
                                   timeout=60) for k in range(n)]  # fmt: skip
            # every request accepted (in the queue, or answered already on a very busy machine)
            wait_for(lambda: queued(server) + sum(f.done() for f in futures) == n, 60, f"{n} requests accepted")
            in_flight = queued(server)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # uvicorn closes its socket within ~0.1 s (more on a loaded machine)
            with pytest.raises(httpx.ConnectError):  # a probe (or a new client) meets a closed socket
                httpx.get(server.base + "/health", timeout=2)
            responses = [f.result() for f in futures]
        assert in_flight >= 1
        assert [r.status_code for r in responses] == [200] * n, [r.text for r in responses if r.status_code != 200]
        assert all(r.json()["results"][0]["entities"] for r in responses)
        # a clean exit: uvicorn re-raises the SIGTERM it handled (status -15; 143 in a shell, 0 under tini -e 143)
        assert server.proc.wait(30) == -signal.SIGTERM, server.output()
        assert "Traceback" not in server.output(), server.output()


def test_stuck_worker_fails_health_and_ready_and_sigterm_still_exits(tiny_bundle, tmp_path) -> None:
    with fake_server(tiny_bundle, tmp_path / "server.log", "--hang-on", "张", watchdog_s="1", drain_s="1") as server:
        base = server.base
        assert httpx.get(base + "/health").status_code == 200
        assert httpx.post(base + "/ner", json={"texts": ["北京"]}).status_code == 200  # healthy traffic passes
        hung: list[BaseException] = []

        def stuck_request() -> None:
            try:
                httpx.post(base + "/ner", json={"texts": ["张三"]}, timeout=60)
            except httpx.TransportError as e:  # the server gives up on it at shutdown
                hung.append(e)

        client = threading.Thread(target=stuck_request, daemon=True)
        client.start()
        took = wait_for(lambda: httpx.get(base + "/health").status_code == 503, 5, "unhealthy")
        assert took < 1 + 2.5, took  # within the watchdog interval (1 s) plus polling slack
        health = httpx.get(base + "/health")
        assert health.json()["error_type"] == "unhealthy" and "hung" in health.json()["error"], health.json()
        ready = httpx.get(base + "/ready")
        assert ready.status_code == 503 and ready.json()["error_type"] == "not_ready", ready.json()
        assert "hung" in ready.json()["error"] and ready.headers["retry-after"] == "1"
        refused = httpx.post(base + "/ner", json={"texts": ["北京"]})  # not queued behind the hung call
        assert refused.status_code == 503 and refused.json()["error_type"] == "not_ready"

        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(15) == -signal.SIGTERM, server.output()
        assert time.monotonic() - t0 < 2 * 1 + 3  # drain_s for the requests, drain_s for the worker, slack
        assert "did not finish its call" in server.output(), server.output()
        client.join(10)
