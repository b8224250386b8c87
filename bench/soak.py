"""Soak: N clients x T minutes of mixed traffic against ``ropenlp serve``; does it stay correct and flat? Not a test.

    python bench/soak.py --clients 64 --minutes 10 [--bundle default] [--json out.json] [-- SERVE FLAGS...]
    python bench/soak.py --url http://127.0.0.1:8000 --pid PID --clients 16 --minutes 2

Starts ``ropenlp serve`` on 127.0.0.1 (a free port, ``bench.service.Server``), or uses a running one given
by ``--url`` (127.0.0.1 / localhost only; ``--pid`` for its memory). Each of ``--clients`` clients holds
one keep-alive connection and sends its next request as soon as the previous answer arrives (closed
loop: at most N requests in flight, never an unbounded queue), drawing the request kind at random
(fixed seed) from the mix: ``/ner`` on 1-8 CLUENER sentences, ``/ner`` on a 40-sentence document
(CMeEE, windows merged), ``/similarity`` pairs, ``/similarity`` query + candidates, ``/embed``.

Reported: status counts (any non-200 or socket error is an error), p50 / p99 latency per kind and
overall, requests/s, and the server's resident memory (VmRSS, sampled every second): at start, after
warm-up (``--warmup-minutes``, default 10 % of the run), at the end, the maximum, and the growth after
warm-up (the acceptance bound is 10 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import load_pairs, load_texts, machine_info, percentiles, split_passthrough, write_json  # noqa: E402
from bench.service import HttpxClient, RawClient, Server  # noqa: E402

KINDS = ("ner", "ner_document", "similarity_pairs", "similarity_rank", "embed")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def make_bodies(seed: int) -> dict[str, list[bytes]]:
    """Request bodies of every kind (the same for every run with this seed)."""
    rng = random.Random(seed)
    sentences, _ = load_texts("cluener")
    stsb, _ = load_texts("stsb")
    pairs = load_pairs()
    document_sentences, _ = load_texts("cmeee-long", long_chars=40)  # ~40-char sentences, 40 per document

    def dump(body: dict) -> bytes:
        return json.dumps(body, ensure_ascii=False).encode()

    bodies: dict[str, list[bytes]] = {k: [] for k in KINDS}
    for _ in range(200):
        bodies["ner"].append(dump({"texts": rng.sample(sentences, rng.randint(1, 8))}))
        bodies["ner_document"].append(dump({"texts": ["".join(rng.sample(document_sentences, 40))]}))
        bodies["similarity_pairs"].append(dump({"pairs": [list(p) for p in rng.sample(pairs, rng.randint(1, 16))]}))
        bodies["similarity_rank"].append(dump({"query": rng.choice(stsb), "candidates": rng.sample(stsb, 16),
                                               "top_k": 5}))  # fmt: skip
        bodies["embed"].append(dump({"texts": rng.sample(stsb, rng.randint(1, 16))}))
    return bodies


async def client(k: int, host: str, port: int, bodies, kind_of: str, until: float, out: list, use_httpx: bool):
    rng = random.Random(k)
    conn = (HttpxClient if use_httpx else RawClient)(host, port)
    try:
        while time.perf_counter() < until:
            kind = rng.choice(KINDS)
            path = "/" + kind_of[kind]
            body = rng.choice(bodies[kind])
            t0 = time.perf_counter()
            try:
                status, _ = await conn.request("POST", path, body)
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
                status = f"error:{type(e).__name__}"
                await conn.close()
                conn = (HttpxClient if use_httpx else RawClient)(host, port)
            out.append((kind, status, t0, time.perf_counter() - t0))
    finally:
        await conn.close()


async def sample_rss(pid: int, until: float, samples: list) -> None:
    while time.perf_counter() < until:
        samples.append((time.perf_counter(), rss_mb(pid)))
        await asyncio.sleep(1.0)


async def soak(host: str, port: int, pid: int, args, bodies) -> dict:
    kind_of = {"ner": "ner", "ner_document": "ner", "similarity_pairs": "similarity",
               "similarity_rank": "similarity", "embed": "embed"}  # fmt: skip
    t_start = time.perf_counter()
    until = t_start + args.minutes * 60
    out: list = []
    samples: list = [(t_start, rss_mb(pid))]
    await asyncio.gather(
        sample_rss(pid, until, samples),
        *(client(k, host, port, bodies, kind_of, until, out, args.client == "httpx") for k in range(args.clients)),
    )
    samples.append((time.perf_counter(), rss_mb(pid)))
    wall = time.perf_counter() - t_start
    warm_at = t_start + (args.warmup_minutes if args.warmup_minutes is not None else args.minutes / 10) * 60
    after_warmup = next((mb for t, mb in samples if t >= warm_at), samples[-1][1])
    statuses = Counter(str(s) for _, s, _, _ in out)
    return {
        "clients": args.clients,
        "minutes": args.minutes,
        "wall_s": round(wall, 1),
        "requests": len(out),
        "requests_per_s": round(len(out) / wall, 1),
        "statuses": dict(statuses),
        "errors": sum(n for s, n in statuses.items() if s != "200"),
        "latency": {"all": percentiles([d for *_, d in out]),
                    **{k: percentiles([d for kind, _, _, d in out if kind == k]) for k in KINDS}},  # fmt: skip
        "rss_mb": {
            "start": round(samples[0][1], 1),
            "after_warmup": round(after_warmup, 1),
            "end": round(samples[-1][1], 1),
            "max": round(max(mb for _, mb in samples), 1),
            "growth_after_warmup_pct": round(100 * (samples[-1][1] - after_warmup) / after_warmup, 2),
            "series": [(round(t - t_start, 1), round(mb, 1)) for t, mb in samples],
        },
    }


def print_report(r: dict) -> None:
    print(f"{r['clients']} clients x {r['minutes']} min: {r['requests']} requests, {r['requests_per_s']}/s, "
          f"statuses {r['statuses']} ({r['errors']} errors)")  # fmt: skip
    for kind, p in r["latency"].items():
        if p.get("n"):
            print(f"  {kind:17s} n={p['n']:6d}  p50 {p['p50_ms']:8.1f} ms  p99 {p['p99_ms']:8.1f} ms")
    m = r["rss_mb"]
    print(f"  RSS MB: start {m['start']}, after warm-up {m['after_warmup']}, end {m['end']}, max {m['max']}; "
          f"growth after warm-up {m['growth_after_warmup_pct']} %")  # fmt: skip


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup-minutes", type=float, default=None, help="default: 10 %% of --minutes")
    p.add_argument("--bundle", default="default", help="for the server this script starts")
    p.add_argument("--url", help="a running server on 127.0.0.1 instead (with --pid)")
    p.add_argument("--pid", type=int, help="the process id of the --url server (for its memory)")
    p.add_argument("--client", choices=("raw", "httpx"), default="raw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv, extra = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    bodies = make_bodies(args.seed)
    if args.url:
        url = urlsplit(args.url)
        if url.hostname not in ("127.0.0.1", "localhost") or args.pid is None:
            raise SystemExit("--url must be a server on 127.0.0.1 / localhost, and --pid its process id")
        result = asyncio.run(soak(url.hostname, url.port or 80, args.pid, args, bodies))
    else:
        with tempfile.TemporaryDirectory() as logs, Server({"bundle": args.bundle}, extra, Path(logs)) as server:
            result = asyncio.run(soak("127.0.0.1", server.port, server.proc.pid, args, bodies))
            result["server_alive"] = server.alive()
    result["machine"] = machine_info()
    result["command"] = " ".join(["python", "bench/soak.py", *(sys.argv[1:] if argv is None else argv)])
    print_report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
