"""ropenlp's HTTP service against infinity-emb on sentence embeddings, under the same load. Not a test.

    bash bench/peers/setup.sh                                         # the peers' venvs (once)
    python bench/peers_http.py --json bench/results/peers-http.json   # builds runs/peers/models when missing
    python bench/peers_http.py --seconds 1 --rounds 1 --concurrency 4 --no-reversal-check   # quick check

Both servers run on 127.0.0.1 with their default settings, on the same encoder (bench/peers.py builds
the models):

* ``ropenlp serve --bundle runs/peers/models/bundle`` (``bench.service.Server``; only the bundle is
  given, so the precision is the CPU's default, static int8), ``POST /embed`` ``{"texts": [...]}``;
* ``infinity_emb v2 --engine optimum --device cpu --pooling-method mean`` on ``runs/peers/models/infinity``
  (its venv ``runs/peers/infinity``; the folder holds sentence-transformers' dynamic int8 graph as
  ``onnx/model_quantized.onnx``, the file infinity picks on a CPU), ``POST /embeddings``
  ``{"model": ..., "input": [...]}``. ``--pooling-method mean`` is the one setting changed: its
  optimum engine's default ("auto") pools [CLS]. Infinity tries ``ORTOptimizer`` on the graph, which
  does not know RoFormer ("Optimization failed ... unoptimized model" in its log) and runs it as it is.

Load: ``--concurrency`` (default 32) closed-loop clients (``bench.service.closed_loop``, one keep-alive
connection each, ``RawClient``), each request 1-8 texts (sizes drawn with ``--seed``), the same request
sequence for both servers. The STS-B dev sentences of at most 62 characters: everyone cuts at 64 tokens
but infinity truncates at the config's 512, so no text here is longer than that. Rounds alternate the
servers (rotated order); both stay up the whole run, so the idle one's CPU is measured too (before the
rounds, ``--idle-seconds``). Figures per server: texts/s (median of rounds), p50 / p99 latency over all
rounds' requests, errors, server and client CPU (cores); and the ratio ropenlp / infinity (target 1.3).

``--reversal-check`` (default on): the cosine between a sentence's vector and its reversal's on ropenlp,
on infinity's optimum engine, and on infinity's default torch engine (with and without
``--no-bettertransformer``), each started for the check alone: a cosine of 1.0 means the server does not
see word order (infinity's BetterTransformer path maps RoFormer onto BERT's layer and drops the rotary
position encoding).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import load_texts, machine_info, median, percentiles, split_passthrough, write_json
from bench.peers import ENCODER, RUNS, build_models, models_ready, ratios, reversal
from bench.service import Payload, RawClient, Server, client_cpu, closed_loop, summarize

log = logging.getLogger("bench.peers_http")

MAX_CHARS = 62  # 64 tokens with [CLS] and [SEP]: a character is at most one token
SERVED = "roformer-zh-v3"
TARGET = 1.3  # README: ropenlp / infinity's ONNX int8 engine, /embed at 32 clients, default settings


class InfinityServer(Server):
    """``infinity_emb v2`` from its venv on 127.0.0.1, offline (no hub, no telemetry)."""

    name = "infinity_emb v2"
    ready_path = "/health"

    def __init__(self, venv: Path, model: Path, engine: str, extra: list[str], log_dir: Path):
        super().__init__({}, extra, log_dir, ready_timeout=300)
        self.venv, self.model, self.engine = venv, model.resolve(), engine
        self.home = log_dir / "hf-home"  # infinity writes its optimised graphs under the hub cache

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "infinity_emb"),
            "v2",
            "--model-id",
            str(self.model),  # absolute: a relative
            "--served-model-name",
            SERVED,
            "--engine",
            self.engine,
            "--device",
            "cpu",  # one is joined twice
            "--pooling-method",
            "mean",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *self.extra,
        ]

    def environment(self) -> dict[str, str]:
        return super().environment() | {
            "HF_HOME": str(self.home),
            "HF_HUB_OFFLINE": "1",
            "DO_NOT_TRACK": "1",
            "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        }


# --------------------------------------------------------------------------------------------
# Requests: the same groups of texts in each server's body format
# --------------------------------------------------------------------------------------------


def groups(texts: list[str], *, count: int, low: int, high: int, seed: int) -> list[list[str]]:
    """``count`` consecutive groups of ``low``..``high`` texts (sizes drawn with ``seed``), cycling."""
    rng, k, out = random.Random(seed), 0, []
    for _ in range(count):
        n = rng.randint(low, high)
        out.append([texts[(k + i) % len(texts)] for i in range(n)])
        k += n
    return out


BODIES = {
    "ropenlp": ("/embed", lambda g: {"texts": g}),
    "infinity": ("/embeddings", lambda g: {"model": SERVED, "input": g}),
}


def payloads(kind: str, gs: list[list[str]]) -> list[Payload]:
    _, body = BODIES[kind]
    return [Payload(json.dumps(body(g), ensure_ascii=False).encode("utf-8"), len(g)) for g in gs]


def vectors(kind: str, server: Server, texts: list[str]) -> np.ndarray:
    import http.client

    path, body = BODIES[kind]
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    c.request(
        "POST",
        path,
        json.dumps(body(texts), ensure_ascii=False).encode("utf-8"),
        {"Content-Type": "application/json"},
    )
    r = c.getresponse()
    data = json.loads(r.read())
    if r.status != 200:
        raise RuntimeError(f"{server.name}: {r.status} {data}")
    return np.asarray(data["vectors"] if kind == "ropenlp" else [d["embedding"] for d in data["data"]])


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def idle_cpu(server: Server, seconds: float) -> float:
    c0 = server.cpu_seconds()
    time.sleep(seconds)
    return (server.cpu_seconds() - c0) / seconds


def one_run(
    server: Server, path: str, bodies: list[Payload], args, concurrency: int
) -> tuple[dict, list[float]]:
    """One closed-loop run: the summary (bench.service.summarize) and the latencies of its requests."""
    s0, c0, w0 = server.cpu_seconds(), client_cpu(), time.perf_counter()
    records, t_from, t_to = asyncio.run(
        closed_loop(
            lambda: RawClient("127.0.0.1", server.port),
            "POST",
            path,
            bodies,
            concurrency=concurrency,
            seconds=args.seconds,
            warmup=args.warmup_seconds,
            timeout=args.timeout,
        )
    )
    wall = time.perf_counter() - w0
    out = summarize(records, t_from, t_to)
    out.pop("p95_ms", None)
    out["server_cpu_per_s"] = (server.cpu_seconds() - s0) / wall
    out["client_cpu_per_s"] = (client_cpu() - c0) / wall
    if not server.alive():
        raise RuntimeError(f"{server.name} died during the run:\n{server.log_tail()}")
    lat = [r.end - r.start for r in records if t_from <= r.start <= t_to and r.status == 200]
    return out, lat


def level(servers: dict[str, Server], bodies: dict[str, list[Payload]], args, concurrency: int) -> dict:
    """``--rounds`` rounds at one concurrency, the servers in a rotated order each round."""
    names = list(servers)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    lats: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            log.info("  %d clients, round %d: %s ...", concurrency, r + 1, name)
            out, lat = one_run(servers[name], BODIES[name][0], bodies[name], args, concurrency)
            runs[name].append(out)
            lats[name] += lat
    rows = {}
    for name in names:
        rs = runs[name]
        rows[name] = {
            "texts_per_s": median([x["items_per_s"] for x in rs]),
            "requests_per_s": median([x["requests_per_s"] for x in rs]),
            **{k: v for k, v in percentiles(lats[name]).items() if k in ("n", "p50_ms", "p99_ms", "mean_ms")},
            "errors": sum(x["errors"] for x in rs),
            "server_cpu_per_s": median([x["server_cpu_per_s"] for x in rs]),
            "client_cpu_per_s": median([x["client_cpu_per_s"] for x in rs]),
            "rounds": rs,
        }
    rates = {n: v["texts_per_s"] for n, v in rows.items()}
    per_round = [
        runs["ropenlp"][i]["items_per_s"] / runs["infinity"][i]["items_per_s"]
        for i in range(args.rounds)
        if runs["infinity"][i]["items_per_s"] > 0
    ]
    return {
        "concurrency": concurrency,
        "servers": rows,
        "ratio": ratios(rates, ours=("ropenlp",)).get("ropenlp/infinity"),
        "ratio_by_round": per_round,
    }


def reversal_checks(args, sample: list[str], log_dir: Path, running: dict[str, Server]) -> dict:
    """Cosine of each sentence's vector with its reversal's, per server (1.0: blind to word order)."""
    pairs = [x for s in sample for x in (s, s[::-1])]
    out = {name: reversal(vectors(name, srv, pairs)) for name, srv in running.items()}
    for label, engine, extra in (
        ("infinity-torch", "torch", []),
        ("infinity-torch-no-bettertransformer", "torch", ["--no-bettertransformer"]),
    ):
        log.info("reversal check: %s ...", label)
        try:
            with InfinityServer(
                args.venvs / "infinity", args.models / "infinity", engine, extra, log_dir
            ) as srv:
                out[label] = reversal(vectors("infinity", srv, pairs)) | {
                    "flags": ["--engine", engine, *extra]
                }
        except RuntimeError as e:  # e.g. the venv lacks sentence-transformers (infinity's [torch] extra)
            out[label] = {"error": str(e).splitlines()[0]}
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    argv, extra = split_passthrough(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=ENCODER)
    p.add_argument("--models", type=Path, default=RUNS / "models", help="built models (made when missing)")
    p.add_argument("--venvs", type=Path, default=RUNS, help="where bench/peers/setup.sh made the venvs")
    p.add_argument("--concurrency", default="32", help="closed-loop clients, comma-separated")
    p.add_argument("--texts-per-request", default="1-8", help="LOW-HIGH texts per request")
    p.add_argument("--rounds", type=int, default=5, help="rounds per concurrency (servers alternate)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per server and round")
    p.add_argument("--warmup-seconds", type=float, default=2.0, help="unmeasured seconds before each run")
    p.add_argument(
        "--idle-seconds", type=float, default=3.0, help="idle CPU of each server, before the rounds"
    )
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--infinity-args", default="", help="extra flags for infinity_emb v2 (one string)")
    p.add_argument("--no-reversal-check", dest="reversal_check", action="store_false")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.extra = extra  # after `--`: flags for `ropenlp serve`
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    low, _, high = args.texts_per_request.partition("-")
    args.low, args.high = int(low), int(high or low)
    if not 1 <= args.low <= args.high or args.rounds < 1:
        p.error("--texts-per-request LOW-HIGH needs 1 <= LOW <= HIGH; --rounds at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not models_ready(args.models):
        build_models(args.encoder, args.models, args.venvs)
    bundle = args.models / "bundle"
    all_texts, origin = load_texts("stsb")
    texts = [t for t in all_texts if len(t) <= MAX_CHARS]
    gs = groups(texts, count=512, low=args.low, high=args.high, seed=args.seed)
    bodies = {name: payloads(name, gs) for name in BODIES}
    machine = machine_info()
    result: dict = {
        "bench": "peers_http",
        "texts": f"{origin}, the {len(texts)} of {len(all_texts)} of at most {MAX_CHARS} characters",
        "texts_per_request": [args.low, args.high],
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "servers": {
            "ropenlp": {"command": None, "flags": {"bundle": str(bundle)}, "extra": args.extra},
            "infinity": {"command": None, "engine": "optimum", "model": str(args.models / "infinity")},
        },
        "machine": machine,
    }
    with tempfile.TemporaryDirectory(prefix="bench-peers-http-") as tmp:
        work = Path(tmp)
        inf_extra = args.infinity_args.split()
        with (
            Server({"bundle": bundle}, args.extra, work) as ours,
            InfinityServer(
                args.venvs / "infinity", args.models / "infinity", "optimum", inf_extra, work
            ) as theirs,
        ):
            servers = {"ropenlp": ours, "infinity": theirs}
            for name, srv in servers.items():
                result["servers"][name]["command"] = " ".join(srv.command())
            result["versions"] = {"infinity": _versions(args.venvs / "infinity")}
            probe = gs[0]
            result["same_vectors_min_cosine"] = float(
                np.min(
                    np.sum(
                        _unit(vectors("ropenlp", ours, probe)) * _unit(vectors("infinity", theirs, probe)),
                        axis=1,
                    )
                )
            )
            result["idle_cpu_per_s"] = {n: idle_cpu(s, args.idle_seconds) for n, s in servers.items()}
            result["levels"] = [level(servers, bodies, args, c) for c in args.concurrency]
            if args.reversal_check:
                result["reversal"] = reversal_checks(args, texts[:8], work, servers)
    result["load_average_after"] = machine_info()["load_average"]
    print_report(result)
    write_json(args.json, result)
    return result


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _versions(venv: Path) -> dict[str, str]:
    """Package versions in a peer's venv (``bench/peers/peer.py versions``)."""
    import subprocess

    from bench.peers import PEER

    out = subprocess.run(
        [str(venv / "bin" / "python"), str(PEER), "versions"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": out.stderr[-500:]}


def print_report(r: dict) -> None:
    print(
        f"\n/embed vs infinity /embeddings: {r['texts']}; {r['texts_per_request'][0]}-{r['texts_per_request'][1]} "
        f"texts/request; {r['rounds']} round(s) x {r['seconds_per_run']:g} s per server; load average "
        f"{r['machine']['load_average']} -> {r['load_average_after']}"
    )
    for name, s in r["servers"].items():
        print(f"  {name}: {s['command']}")
    print(
        f"same vectors (min cosine, ropenlp int8 vs infinity int8): {r['same_vectors_min_cosine']:.4f}; idle CPU "
        + ", ".join(f"{n} {c:.2f}" for n, c in r["idle_cpu_per_s"].items())
    )
    print(
        f"\n{'clients':>8} {'server':<10}{'texts/s':>9}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'err':>5}"
        f"{'srvCPU':>8}{'cliCPU':>8}"
    )
    for lv in r["levels"]:
        for name, v in lv["servers"].items():
            print(
                f"{lv['concurrency']:>8} {name:<10}{v['texts_per_s']:>9.1f}{v['requests_per_s']:>8.1f}"
                f"{v.get('p50_ms', 0):>9.2f}{v.get('p99_ms', 0):>9.2f}{v['errors']:>5}{v['server_cpu_per_s']:>8.2f}"
                f"{v['client_cpu_per_s']:>8.2f}"
            )
        ratio = lv["ratio"]
        if ratio is not None:
            print(
                f"{'':>8} ratio ropenlp / infinity: {ratio:.2f} (rounds: "
                + ", ".join(f"{x:.2f}" for x in lv["ratio_by_round"])
                + f"); target {TARGET} {'met' if ratio >= TARGET else 'NOT met'}"
            )
    if "reversal" in r:
        print("reversal (cosine of a sentence and its reversal; 1.0 = blind to word order):")
        for name, x in r["reversal"].items():
            print(
                f"  {name}: "
                + (
                    x["error"]
                    if "error" in x
                    else f"{x['cosine_mean']:.6f} (min {x['cosine_min']:.6f})"
                    + ("  <- ignores word order" if x["order_blind"] else "")
                )
            )


if __name__ == "__main__":
    main()
