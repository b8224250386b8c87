"""Speed of the HTTP service under concurrent load, against the engine alone. Not a test.

    python bench/service.py --bundle DIR [--task ner] [--threads 1] [--json out.json] [-- SERVE FLAGS...]
    python bench/service.py --random --layers 2 --hidden 64 --seconds 1 --concurrency 1,8 --grid-wait 0 --grid-tokens 8192

Starts ``ropenlp serve`` as a subprocess on 127.0.0.1 (a free port; ``ROPENLP_*`` variables are not
passed on: the flags given here and after ``--`` are the whole configuration), waits for /ready, then:

1. client ceiling: the load generator against ``GET /health`` at the highest concurrency (what this
   client can drive at all; the service figures mean something only well below it);
2. closed loop: N clients (``--concurrency``, default 1, 8, 32, 64), each one connection sending its
   next request as soon as the previous answer arrives, for ``--seconds`` after ``--warmup-seconds``:
   requests/s, texts/s, p50 / p95 / p99 latency, errors (non-200 statuses, timeouts, socket errors),
   CPU seconds used by the server and by this client per wall second;
3. the engine alone, in this process, with the server's settings (``Engine.from_settings``), on the
   same texts: one request's worth of texts per call (single-request latency) and ``--max-items``
   texts per call (its throughput); measured before and after the load, alternating the two.
   Service efficiency = the service's best texts/s / the engine's texts/s at ``--max-items`` per call;
4. open loop at half the best request rate (Poisson arrivals, latency counted from the scheduled send
   time, so a slow server cannot slow the load down): p99 against the single-request latency
   (closed loop, 1 client, p50); the target is at most ``--p99-target`` (3) times;
5. the batching grid: the server restarted for every (``--grid-wait`` max wait ms) x (``--grid-tokens``
   token budget), each measured with 1 client and with ``--grid-concurrency`` clients.

Clients: ``raw`` (default; HTTP/1.1 keep-alive on asyncio streams, the cheapest a Python client gets)
or ``httpx`` (one ``AsyncClient`` per client; tops out near 1k requests/s). ``--wrk`` also runs ``wrk``
(with a Lua script cycling through the same POST bodies) at every concurrency when it is installed.
Client and server share the machine's cores: read the CPU columns before reading throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import (
    write_json,
    split_passthrough,
    TEXT_SETS,
    chunk,
    load_pairs,
    load_texts,
    machine_info,
    median,
    percentiles,
    random_bundle,
    round_robin,
)

log = logging.getLogger("bench.service")

ROUTES = {"ner": "/ner", "embed": "/embed", "similarity": "/similarity"}
DEFAULT_SET = {"ner": "cluener", "embed": "stsb", "similarity": "stsb"}


# --------------------------------------------------------------------------------------------
# The server: `ropenlp serve` in a subprocess
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``ropenlp serve`` on 127.0.0.1: started and ready on enter, SIGTERM (then SIGKILL) on exit.

    Another server (bench/peers_http.py) overrides ``command``, ``environment``, ``name`` and ``ready_path``."""

    name = "ropenlp serve"
    ready_path = "/ready"  # answers 200 once the server takes requests

    def __init__(
        self, flags: dict[str, object], extra: list[str], log_dir: Path, *, ready_timeout: float = 180
    ):
        self.flags, self.extra, self.ready_timeout = flags, extra, ready_timeout
        self.port = free_port()
        self.log_path = log_dir / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "ropenlp",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--log-format",
            "text",
        ]
        for name, value in self.flags.items():
            if value is not None:
                cmd += [f"--{name.replace('_', '-')}", str(value)]
        return cmd + self.extra

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("ROPENLP_")}

    def __enter__(self) -> Self:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=self.environment()
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", self.ready_path)
                if c.getresponse().status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {self.ready_timeout:.0f} s:\n{self.log_tail()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """user + system CPU seconds of the server process so far (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --------------------------------------------------------------------------------------------
# Clients: one connection each
# --------------------------------------------------------------------------------------------


class RawClient:
    """One HTTP/1.1 keep-alive connection on asyncio streams; bodies are sent as prepared bytes."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode("ascii") + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        if headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    reset = close  # the next request opens a new connection


class HttpxClient:
    """``httpx.AsyncClient`` limited to one connection."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.client = self._new()

    def _new(self):
        import httpx

        return httpx.AsyncClient(
            base_url=f"http://{self.host}:{self.port}",
            timeout=None,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        r = await self.client.request(
            method, path, content=body or None, headers={"content-type": "application/json"} if body else None
        )
        return r.status_code, r.content

    async def close(self) -> None:
        await self.client.aclose()

    async def reset(self) -> None:
        await self.client.aclose()
        self.client = self._new()


@dataclass(frozen=True)
class Payload:
    body: bytes
    items: int  # texts (ner, embed) or pairs (similarity) in the request


@dataclass(frozen=True)
class Record:
    start: float  # when it was sent (closed loop) or scheduled (open loop)
    end: float
    status: int | str  # HTTP status, or "timeout" / an exception name
    items: int
    lag: float | None = None  # open loop: actual send time - scheduled time


async def _one(client, method: str, path: str, p: Payload, timeout: float) -> int | str:
    """The HTTP status, or "timeout" / the exception's name (the connection is then reset): every failure
    is a counted error, never a crash of the load generator."""
    try:
        status, _ = await asyncio.wait_for(client.request(method, path, p.body), timeout)
        return status
    except Exception as e:  # noqa: BLE001
        await client.reset()
        return "timeout" if isinstance(e, TimeoutError) else type(e).__name__


def summarize(
    records: list[Record], t_from: float, t_to: float, *, sample_errors: list | None = None
) -> dict:
    """Throughput over [t_from, t_to] (requests that ended in it) and latency of requests started in it."""
    done = [r for r in records if t_from <= r.end <= t_to]
    started = [r for r in records if t_from <= r.start <= t_to]
    ok = [r for r in done if r.status == 200]
    errors: dict[str, int] = {}
    for r in started:
        if r.status != 200:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    span = t_to - t_from
    out = {
        "seconds": span,
        "requests": len(done),
        "requests_per_s": len(ok) / span,
        "items_per_s": sum(r.items for r in ok) / span,
        "errors": sum(errors.values()),
        "errors_by_status": errors,
        **percentiles([r.end - r.start for r in started if r.status == 200]),
    }
    lags = [r.lag for r in started if r.lag is not None]
    if lags:
        out["send_lag_p99_ms"] = float(np.percentile(lags, 99) * 1e3)
    return out


async def closed_loop(
    make: Callable,
    method: str,
    path: str,
    payloads: list[Payload],
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
    timeout: float,
) -> tuple[list[Record], float, float]:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    records: list[Record] = []
    t_from = time.perf_counter() + warmup
    t_to = t_from + seconds

    async def worker(w: int) -> None:
        client, k = make(), w
        try:
            while time.perf_counter() < t_to:
                p = payloads[k % len(payloads)]
                k += concurrency
                t0 = time.perf_counter()
                status = await _one(client, method, path, p, timeout)
                records.append(Record(t0, time.perf_counter(), status, p.items))
        finally:
            await client.close()

    await asyncio.wait_for(
        asyncio.gather(*(worker(w) for w in range(concurrency))), warmup + seconds + timeout + 30
    )
    return records, t_from, t_to


async def open_loop(
    make: Callable,
    method: str,
    path: str,
    payloads: list[Payload],
    *,
    rate: float,
    seconds: float,
    warmup: float,
    connections: int,
    timeout: float,
    seed: int = 0,
) -> tuple[list[Record], float, float]:
    """Poisson arrivals at ``rate`` per second over ``connections`` connections; a request waiting for a
    free connection is late, and its latency (from the scheduled time) shows it."""
    rng = random.Random(seed)
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(make())
    records: list[Record] = []
    begin = time.perf_counter()
    t_from, t_to = begin + warmup, begin + warmup + seconds

    async def send(k: int, scheduled: float) -> None:
        p = payloads[k % len(payloads)]
        client = await pool.get()
        lag = time.perf_counter() - scheduled
        try:
            status = await _one(client, method, path, p, timeout)
        finally:
            pool.put_nowait(client)
        records.append(Record(scheduled, time.perf_counter(), status, p.items, lag))

    tasks, t, k = [], begin, 0
    while True:
        t += rng.expovariate(rate)
        if t > t_to:
            break
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(k, t)))
        k += 1
    await asyncio.wait_for(asyncio.gather(*tasks), timeout + 30)
    while not pool.empty():
        await pool.get_nowait().close()
    return records, t_from, t_to


_SAMPLE = re.compile(r"^(ropenlp_[a-z_]+?)(?:\{(.*)\})? ([-+\w.]+)$")
SCRAPED = (
    "ropenlp_batch_requests",
    "ropenlp_batch_sequences",
    "ropenlp_batch_tokens",
    "ropenlp_inference_seconds",
    "ropenlp_stage_seconds",
)


def scrape(server: Server) -> dict[str, float]:
    """Sums and counts of the server's batch and stage histograms (GET /metrics), over all tasks / routes."""
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode("utf-8", "replace")
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or not m.group(1).endswith(("_sum", "_count")):
            continue
        name = m.group(1)
        if not name.rsplit("_", 1)[0] in SCRAPED:
            continue
        stage = re.search(r'stage="(\w+)"', m.group(2) or "")
        key = name + (f":{stage.group(1)}" if stage else "")
        out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def server_figures(before: dict[str, float], after: dict[str, float], wall: float) -> dict:
    """What the server did during a run: batches and their make-up, worker busy share, stage means."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("ropenlp_batch_requests_count", 0.0)
    out = {"batches": int(batches), "worker_busy": d.get("ropenlp_inference_seconds_sum", 0.0) / wall}
    if batches:
        out["requests_per_batch"] = d["ropenlp_batch_requests_sum"] / batches
        out["rows_per_batch"] = d["ropenlp_batch_sequences_sum"] / batches
        out["padded_tokens_per_batch"] = d["ropenlp_batch_tokens_sum"] / batches
        out["model_ms_per_batch"] = d["ropenlp_inference_seconds_sum"] / batches * 1e3
    for stage in ("tokenize", "queue", "inference"):
        n = d.get(f"ropenlp_stage_seconds_count:{stage}", 0.0)
        if n:
            out[f"{stage}_ms_per_request"] = d[f"ropenlp_stage_seconds_sum:{stage}"] / n * 1e3
    return out


def client_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(
    server: Server,
    make: Callable,
    method: str,
    path: str,
    payloads: list[Payload],
    args,
    *,
    concurrency: int | None = None,
    rate: float | None = None,
) -> dict:
    """One closed-loop (``concurrency``) or open-loop (``rate``) run with CPU use of server and client."""
    m0 = scrape(server)
    s0, c0, w0 = server.cpu_seconds(), client_cpu(), time.perf_counter()
    if rate is None:
        records, t_from, t_to = asyncio.run(
            closed_loop(
                make,
                method,
                path,
                payloads,
                concurrency=concurrency,
                seconds=args.seconds,
                warmup=args.warmup_seconds,
                timeout=args.timeout,
            )
        )
    else:
        records, t_from, t_to = asyncio.run(
            open_loop(
                make,
                method,
                path,
                payloads,
                rate=rate,
                seconds=args.seconds,
                warmup=args.warmup_seconds,
                connections=max(args.concurrency),
                timeout=args.timeout,
                seed=args.seed,
            )
        )
    wall = time.perf_counter() - w0
    out = summarize(records, t_from, t_to)
    out["server_cpu_per_s"] = (server.cpu_seconds() - s0) / wall
    out["client_cpu_per_s"] = (client_cpu() - c0) / wall
    out["server"] = server_figures(m0, scrape(server), wall)
    if not server.alive():
        raise RuntimeError(f"the server died during the run:\n{server.log_tail()}")
    return out


# --------------------------------------------------------------------------------------------
# The engine alone (same settings, same texts)
# --------------------------------------------------------------------------------------------


def engine_calls(
    engine, task: str, items: list, sizes: dict[str, int], threshold: float | None
) -> dict[str, Callable[[int], object]]:
    """{name: call r -> one Engine request of ``size`` items (the r-th group of ``items``)}."""

    def call(n: int) -> Callable[[int], object]:
        def run(r: int):
            batch = chunk(items, n, r)
            if task == "ner":
                return engine.run("ner", texts=batch, threshold=threshold)
            if task == "embed":
                return engine.run("embed", texts=batch)
            return engine.run("similarity", pairs=batch)

        return run

    return {name: call(n) for name, n in sizes.items()}


def engine_figures(times: dict[str, list[float]], sizes: dict[str, int]) -> dict:
    return {
        name: {"items_per_call": n, **percentiles(times[name]), "items_per_s": n / median(times[name])}
        for name, n in sizes.items()
    }


# --------------------------------------------------------------------------------------------
# wrk (optional)
# --------------------------------------------------------------------------------------------


def wrk_script(path: Path, route: str, payloads: list[Payload]) -> Path:
    bodies = [p.body.decode("utf-8") for p in payloads[:256]]
    eq = "=" * next(n for n in range(1, 20) if not any(f"]{'=' * n}]" in b for b in bodies))
    lua = (
        ["local bodies = {"]
        + [f"  [{eq}[{b}]{eq}]," for b in bodies]
        + [
            "}",
            "local i = 0",
            "request = function()",
            "  i = i % #bodies + 1",
            f'  return wrk.format("POST", "{route}", {{["Content-Type"] = "application/json"}}, bodies[i])',
            "end",
        ]
    )
    path.write_text("\n".join(lua) + "\n", encoding="utf-8")
    return path


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value.strip())
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[m.group(2)]


def run_wrk(base: str, script: Path, concurrency: int, seconds: float, timeout: float) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={int(timeout)}s",
        "--latency",
        "-s",
        str(script),
        base,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=False, timeout=seconds + timeout + 30
    ).stdout
    result: dict = {"concurrency": concurrency, "command": " ".join(cmd)}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        result["requests_per_s"] = float(m.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, flags=re.MULTILINE):
        result[f"p{pct}_ms"] = _ms(value)
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(m.group(1)) if m else 0
    if m := re.search(r"Socket errors: (.*)", out):
        result["socket_errors"] = m.group(1)
    if "requests_per_s" not in result:
        result["output"] = out[-2000:]
    return result


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def make_payloads(
    task: str, set_name: str, per_request: int, threshold: float | None, count: int = 512
) -> tuple[list[Payload], list, str]:
    """(request bodies, the items they cycle through, description of the texts)."""
    if task == "similarity":
        items, origin = load_pairs(), "STS-B (zh) dev pairs"
    else:
        items, origin = load_texts(set_name)
    payloads = []
    for k in range(count):
        group = chunk(items, per_request, k)
        body: dict = {"pairs": [list(p) for p in group]} if task == "similarity" else {"texts": group}
        if task == "ner" and threshold is not None:
            body["threshold"] = threshold
        payloads.append(Payload(json.dumps(body, ensure_ascii=False).encode("utf-8"), per_request))
    return payloads, items, origin


def parse_args(argv: list[str] | None):
    argv, extra = split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the shipped one)")
    p.add_argument("--random", action="store_true", help="export a random-weight bundle and serve that")
    p.add_argument("--layers", type=int, default=4, help="--random: encoder layers")
    p.add_argument("--hidden", type=int, default=256, help="--random: hidden size")
    p.add_argument("--task", choices=list(ROUTES), default="ner", help="the route to load")
    p.add_argument(
        "--texts", choices=list(TEXT_SETS), help="text set (default: cluener for ner, stsb otherwise)"
    )
    p.add_argument("--texts-per-request", type=int, default=1, help="texts (similarity: pairs) per request")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="NER threshold sent with every request (default: the bundle's; with --random: ~3 "
        "entities per text)",
    )
    srv = p.add_argument_group("server settings (the engine alone gets the same)")
    srv.add_argument("--precision", choices=["fp32", "int8", "fp16"], default=None)
    srv.add_argument("--provider", choices=["auto", "cpu", "cuda"], default="cpu")
    srv.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    srv.add_argument("--workers", type=int, default=None, help="inference workers (default: the server's)")
    srv.add_argument("--max-wait-ms", type=float, default=None, help="default: the server's")
    srv.add_argument("--batch-tokens", type=int, default=None, help="default: the server's")
    srv.add_argument("--max-items", type=int, default=64, help="per request; also the engine's big call")
    srv.add_argument("--max-queue", type=int, default=None, help="default: the server's")
    load = p.add_argument_group("load")
    load.add_argument("--client", choices=["raw", "httpx"], default="raw")
    load.add_argument("--concurrency", default="1,8,32,64", help="closed-loop clients, comma-separated")
    load.add_argument("--seconds", type=float, default=10.0, help="measured seconds per run")
    load.add_argument("--warmup-seconds", type=float, default=1.0, help="unmeasured seconds before each run")
    load.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as failed")
    load.add_argument("--p99-target", type=float, default=3.0, help="p99 at half load / single-request p50")
    load.add_argument(
        "--no-half-load", action="store_true", help="skip the open-loop run at half the best rate"
    )
    load.add_argument("--no-ceiling", action="store_true", help="skip the client ceiling (GET /health)")
    load.add_argument("--engine-warmup", type=int, default=2)
    load.add_argument(
        "--no-engine-after",
        dest="engine_after",
        action="store_false",
        help="measure the engine alone only before the load",
    )
    load.add_argument("--wrk", action="store_true", help="also run wrk at every concurrency (if installed)")
    load.add_argument("--seed", type=int, default=0)
    grid = p.add_argument_group("batching grid (one server per point)")
    grid.add_argument("--grid-wait", default="0,2,5", help="max wait ms values ('' to skip the grid)")
    grid.add_argument("--grid-tokens", default="2048,8192", help="batch token budgets")
    grid.add_argument("--grid-concurrency", type=int, default=32)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.extra = extra
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    args.grid = [
        (float(w), int(t))
        for w in args.grid_wait.split(",")
        if w.strip()
        for t in args.grid_tokens.split(",")
        if t.strip()
    ]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    from bench.engine import calibrate_threshold
    from service.core import Engine
    from service.settings import DEFAULT_BUNDLE, Settings

    machine = machine_info()
    route = ROUTES[args.task]
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        work = Path(tmp)
        if args.random:
            sample = load_texts(args.texts or DEFAULT_SET[args.task])[0]
            bundle, _ = random_bundle(work / "model", layers=args.layers, hidden=args.hidden, texts=sample)
        else:
            bundle = args.bundle or DEFAULT_BUNDLE
        flags = {
            "bundle": bundle,
            "provider": args.provider,
            "precision": args.precision,
            "intra_op_threads": args.threads,
            "inter_op_threads": 1,
            "inference_workers": args.workers,
            "max_wait_ms": args.max_wait_ms,
            "batch_tokens": args.batch_tokens,
            "max_items": args.max_items,
            "max_queue": args.max_queue,
        }
        settings = Settings.from_env(environ={}, **flags)
        log.info("engine alone (the server's settings) ...")
        engine = Engine.from_settings(settings)
        engine.warm_up()
        threshold = args.threshold
        if threshold is None and args.random and args.task == "ner":
            texts = load_texts(args.texts or DEFAULT_SET["ner"])[0][:64]
            threshold = min(
                max(calibrate_threshold(engine, texts, 3.0), settings.threshold_min), settings.threshold_max
            )
        payloads, items, origin = make_payloads(
            args.task, args.texts or DEFAULT_SET[args.task], args.texts_per_request, threshold
        )
        sizes = {"request": args.texts_per_request, "max_items": settings.max_items}
        calls = engine_calls(engine, args.task, items, sizes, threshold)
        engine_runs = {
            "before": round_robin(calls, warmup=args.engine_warmup, min_rounds=3, seconds=args.seconds)
        }
        host = "127.0.0.1"
        client_type = RawClient if args.client == "raw" else HttpxClient
        info = engine.info()
        result: dict = {
            "bench": "service",
            "task": args.task,
            "route": route,
            "texts": origin,
            "texts_per_request": args.texts_per_request,
            "threshold": threshold,
            "bundle": f"random {args.layers} layers x {args.hidden}" if args.random else str(bundle),
            "client": args.client,
            "settings": settings.public() | {"bundle": str(bundle), "workers": settings.workers},
            "serve_extra_flags": args.extra,
            "engine_info": {"precision": info["precision"], "provider": info["provider"]},
            "seconds_per_run": args.seconds,
            "machine": machine,
        }
        with Server(flags, args.extra, work) as server:
            make = lambda: client_type(host, server.port)
            if not args.no_ceiling:
                log.info("client ceiling: GET /health x %d ...", max(args.concurrency))
                ceiling = measure(
                    server, make, "GET", "/health", [Payload(b"", 0)], args, concurrency=max(args.concurrency)
                )
                result["client_ceiling"] = {"concurrency": max(args.concurrency), **ceiling}
            levels = []
            for c in args.concurrency:
                log.info("closed loop: %d client(s) ...", c)
                levels.append(
                    {"concurrency": c, **measure(server, make, "POST", route, payloads, args, concurrency=c)}
                )
            result["levels"] = levels
            best = max(levels, key=lambda r: r["items_per_s"])
            single = next((r for r in levels if r["concurrency"] == 1), None)
            result["max"] = {
                "concurrency": best["concurrency"],
                "requests_per_s": best["requests_per_s"],
                "items_per_s": best["items_per_s"],
                "p99_ms": best.get("p99_ms"),
            }
            if single is not None and single.get("n"):
                result["single_request_p50_ms"] = single["p50_ms"]
            if not args.no_half_load and best["requests_per_s"] > 0:
                rate = best["requests_per_s"] / 2
                log.info("open loop at %.1f requests/s (half the best) ...", rate)
                half = measure(server, make, "POST", route, payloads, args, rate=rate)
                half["offered_requests_per_s"] = rate
                if single is not None and single.get("n") and half.get("n"):
                    half["p99_over_single_p50"] = half["p99_ms"] / single["p50_ms"]
                    half["target"] = args.p99_target
                result["half_load"] = half
            if args.wrk:
                result["wrk"] = wrk_runs(server, route, payloads, args, work)
        if args.engine_after:
            log.info("engine alone, again ...")
            engine_runs["after"] = round_robin(calls, warmup=1, min_rounds=3, seconds=args.seconds)
        del engine, calls
        both = {k: [x for t in engine_runs.values() for x in t[k]] for k in sizes}
        result["engine"] = engine_figures(both, sizes) | {
            "by_phase": {phase: engine_figures(t, sizes) for phase, t in engine_runs.items()}
        }
        result["service_efficiency"] = (
            result["max"]["items_per_s"] / result["engine"]["max_items"]["items_per_s"]
        )

        grid = []
        for wait_ms, tokens in args.grid:
            log.info("grid: max_wait_ms %g, batch_tokens %d ...", wait_ms, tokens)
            point_flags = flags | {"max_wait_ms": wait_ms, "batch_tokens": tokens}
            with Server(point_flags, args.extra, work) as server:
                make = lambda: client_type(host, server.port)
                point = {"max_wait_ms": wait_ms, "batch_tokens": tokens}
                for c in sorted({1, args.grid_concurrency}):
                    point[f"c{c}"] = measure(server, make, "POST", route, payloads, args, concurrency=c)
                grid.append(point)
        result["grid"] = grid
    result["load_average_after"] = machine_info()["load_average"]
    print_report(result, args)
    write_json(args.json, result)
    return result


def wrk_runs(server: Server, route: str, payloads: list[Payload], args, work: Path) -> list[dict]:
    if shutil.which("wrk") is None:
        log.warning("--wrk: wrk is not installed (Debian: apt-get install wrk); skipped")
        return []
    script = wrk_script(work / "post.lua", route, payloads)
    runs = []
    for c in args.concurrency:
        log.info("wrk: %d connection(s) ...", c)
        r = run_wrk(server.base, script, c, args.seconds, args.timeout)
        r["items_per_s"] = r.get("requests_per_s", 0.0) * args.texts_per_request
        runs.append(r)
    return runs


def _row(x: dict) -> str:
    """req/s, items/s, latency, errors, then what the server did (requests per batch, worker busy, CPU)."""
    sv = x.get("server", {})
    return (
        f"{x['requests_per_s']:>9.1f}{x['items_per_s']:>9.1f}{x.get('p50_ms', 0):>8.2f}{x.get('p95_ms', 0):>8.2f}"
        f"{x.get('p99_ms', 0):>8.2f}{x['errors']:>6}{sv.get('requests_per_batch', 0):>8.1f}"
        f"{100 * sv.get('worker_busy', 0):>6.0f}%{x['server_cpu_per_s']:>7.2f}{x['client_cpu_per_s']:>7.2f}"
    )


ROW_HEAD = (
    f"{'req/s':>9}{'{unit}/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'err':>6}{'req/bat':>8}{'busy':>7}"
    f"{'srvCPU':>7}{'cliCPU':>7}"
)


def print_report(r: dict, args) -> None:
    s, e = r["settings"], r["engine"]
    unit = "pairs" if r["task"] == "similarity" else "texts"
    head = ROW_HEAD.replace("{unit}", unit)
    print(
        f"\n{r['route']} ({r['texts_per_request']} {unit}/request, {r['texts']}), {r['bundle']}, "
        f"precision {r['engine_info']['precision']}, intra-op threads {s['intra_op_threads']}, "
        f"inference workers {s.get('workers', 1)}, "
        f"max_wait_ms {s['max_wait_ms']}, batch_tokens {s['batch_tokens']}; client {r['client']}; "
        f"load average {r['machine']['load_average']} -> {r['load_average_after']}"
    )
    if "client_ceiling" in r:
        c = r["client_ceiling"]
        print(
            f"client ceiling: GET /health x {c['concurrency']}: {c['requests_per_s']:.0f} requests/s "
            f"(client CPU {c['client_cpu_per_s']:.2f}, server CPU {c['server_cpu_per_s']:.2f} cores)"
        )
    print(
        f"engine alone: {e['request']['items_per_call']} {unit}/call p50 {e['request']['p50_ms']:.2f} ms "
        f"({e['request']['items_per_s']:.1f} {unit}/s); {e['max_items']['items_per_call']} {unit}/call "
        f"{e['max_items']['items_per_s']:.1f} {unit}/s"
    )
    print(f"\n{'clients':>8}{head}   (busy: seconds in the model per second, all workers; CPU: cores used)")
    for x in r["levels"]:
        print(f"{x['concurrency']:>8}{_row(x)}")
    m = r["max"]
    print(
        f"best: {m['items_per_s']:.1f} {unit}/s with {m['concurrency']} clients; service efficiency "
        f"{r['service_efficiency']:.2f} of the engine alone ({e['max_items']['items_per_call']} {unit}/call)"
    )
    if "half_load" in r:
        h = r["half_load"]
        ratio = h.get("p99_over_single_p50")
        verdict = (
            f" = {ratio:.2f}x the single-request p50 {r['single_request_p50_ms']:.2f} ms "
            f"({'within' if ratio <= args.p99_target else 'ABOVE'} the {args.p99_target:g}x target)"
            if ratio is not None
            else ""
        )
        print(
            f"half load: {h['offered_requests_per_s']:.1f} req/s offered (Poisson), {h['requests_per_s']:.1f} served, "
            f"p50 {h.get('p50_ms', 0):.2f} ms, p99 {h.get('p99_ms', 0):.2f} ms{verdict}; errors {h['errors']}, "
            f"client send lag p99 {h.get('send_lag_p99_ms', 0):.2f} ms"
        )
    for w in r.get("wrk", []):
        print(
            f"wrk -c{w['concurrency']}: {w.get('requests_per_s', float('nan')):.1f} req/s, "
            f"p50 {w.get('p50_ms', float('nan')):.2f} ms, p99 {w.get('p99_ms', float('nan')):.2f} ms, "
            f"non-2xx {w['non_2xx']}"
        )
    if r["grid"]:
        print(f"\nbatching grid\n{'wait ms':>8}{'tokens':>7}{'clients':>8}{head}")
        for g in r["grid"]:
            for k in (k for k in g if k.startswith("c")):
                print(f"{g['max_wait_ms']:>8g}{g['batch_tokens']:>7}{k[1:]:>8}{_row(g[k])}")


if __name__ == "__main__":
    main()
