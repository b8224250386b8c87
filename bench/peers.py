"""ropenlp's engine against its peers, in process: the same encoder, the same sentences. Not a test.

    bash bench/peers/setup.sh                                    # the peers' venvs under runs/peers/ (once)
    python bench/peers.py --json bench/results/peers.json        # builds runs/peers/models when missing
    python bench/peers.py --seconds 1 --batch-sizes 1 --threads 1 --min-rounds 1   # quick check
    python bench/peers_http.py ...                               # the HTTP side: ropenlp serve vs infinity

The model: one encoder for everyone, ``encoders/roformer-zh-v3`` (the shipped 4 x 256 RoFormer, vocab 8000).

* embeddings: mean pooling + L2 for everyone (infinity's optimum engine pools only by mean or [CLS], and
  ST's ONNX export has the last layer only, so ropenlp's default first-last-avg is not on offer there);
  ropenlp: a similarity checkpoint (``models.tasks.SimilarityModel``, pooling "mean", no whitening,
  max_length 64); sentence-transformers: ``Transformer(max_seq_length=64) + Pooling("mean")``;
* NER: ropenlp: the shipped head shape (GlobalPointer "gp", the 10 CLUENER types, max_length 64, stride 32,
  flat decoding), random, seed 0, threshold set so ~3 entities per text pass; transformers:
  ``RoFormerForTokenClassification``, a random linear classifier (seed 0) over BIO tags of the same 10
  types, in the ``token-classification`` pipeline (``aggregation_strategy="simple"``).

ropenlp's bundle (fp32 and static int8, calibrated on the training splits) is exported here with
``export.onnx.export_bundle``; the peers' folders and their ONNX / dynamic int8 graphs are made in the
``st`` venv with the peers' own tools (``bench/peers/peer.py build-st``).

Variants (``bench/peers/peer.py`` ``BACKENDS``), each a worker process in its own venv
(ropenlp: this Python; the others: ``runs/peers/st``):

    embed  ropenlp-fp32  ropenlp-int8  st-torch  st-onnx-int8   (st-onnx: fp32, on request)
    ner    ropenlp-fp32  ropenlp-int8  hf-ner-torch  optimum-ner-int8

A call is one end-to-end request of B texts (tokenize, run, pool / decode): ``Engine.run``,
``SentenceTransformer.encode(batch_size=B)``, ``pipeline(texts, batch_size=B)``. The worker times each call
itself, so the pipe between driver and worker is not in the figure. Cells are (task, threads, batch size);
within a cell, ``bench.common.round_robin`` gives every variant a turn of ``--calls-per-turn`` calls per
round on the same texts, in a rotated order, with ``--gap-ms`` of idle time before each turn (so threads
still spinning in the last worker do not steal the next one's cores). Every worker gets the same thread
count: ONNX Runtime ``intra_op_num_threads``, ``torch.set_num_threads``, ``OMP_NUM_THREADS`` and
``RAYON_NUM_THREADS`` (the tokenizers' pool); everything else is each library's default.

Output: p50 / p99 per call, texts/s (B / median call time), and ratios: ropenlp's texts/s / each peer's.
The target ratio (README): ropenlp-int8 >= 1.5 x st-onnx-int8. Also a sanity check of the shared weights
(cosine of every embed variant's vectors to ropenlp-fp32's; entities per text for NER) and the reversal
check: the cosine between a sentence's vector and its reversal's (1.0 = the model does not see word order).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import REPO, SHARED_DATA, load_texts, machine_info, median, percentiles, round_robin, write_json

log = logging.getLogger("bench.peers")

PEER = REPO / "bench" / "peers" / "peer.py"
ENCODER = REPO / "encoders" / "roformer-zh-v3"
RUNS = REPO / "runs" / "peers"
# backend -> venv under --venvs (None: this Python, with ropenlp installed)
VENV = {
    "ropenlp-fp32": None,
    "ropenlp-int8": None,
    "st-torch": "st",
    "st-onnx": "st",
    "st-onnx-int8": "st",
    "hf-ner-torch": "st",
    "optimum-ner-int8": "st",
}
DEFAULT_VARIANTS = {
    "embed": ("ropenlp-fp32", "ropenlp-int8", "st-torch", "st-onnx-int8"),
    "ner": ("ropenlp-fp32", "ropenlp-int8", "hf-ner-torch", "optimum-ner-int8"),
}
TEXT_SET = {"embed": "stsb", "ner": "cluener"}
TARGETS = {"embed": ("ropenlp-int8", "st-onnx-int8", 1.5)}  # task -> (ours, peer, ratio the README aims at)
OURS = ("ropenlp-fp32", "ropenlp-int8")


def _peer_module():
    """bench/peers/peer.py (its folder is not importable as ``bench.peers``: this file holds that name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_peer", PEER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peer = _peer_module()
TASKS_OF = {name: tasks for name, (tasks, _) in peer.BACKENDS.items()}  # backend -> tasks it serves


# --------------------------------------------------------------------------------------------
# The models: ropenlp's bundle here, the peers' folders in the st venv
# --------------------------------------------------------------------------------------------


def venv_python(venvs: Path, name: str | None) -> str:
    return sys.executable if name is None else str(venvs / name / "bin" / "python")


def train_texts(task: str, data: Path = SHARED_DATA) -> tuple[list[str], str]:
    """Calibration texts for static int8: the training split (the bench measures on the dev split)."""
    if task == "ner":
        path = data / "cluener" / "train.json"
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()], str(path)
    path = data / "stsb_zh" / "train.tsv"
    with open(path, encoding="utf-8") as f:
        return [c for line in f for c in line.rstrip("\n").split("\t")[:2] if c.strip()], str(path)


def build_ropenlp(encoder: Path, out: Path, *, seed: int = 0) -> Path:
    """Task checkpoints from the encoder's weights (no training; the NER head random with ``seed``) and
    a bundle with fp32 and static int8 graphs of both."""
    import torch

    from export.onnx import export_bundle
    from export.variants import CalibrationTexts
    from models.roformer import RoFormerEncoder
    from models.tasks import NerConfig, NerModel, SimilarityConfig, SimilarityModel

    vocab = encoder / "vocab.txt"
    torch.manual_seed(seed)
    ner_cfg = NerConfig(labels=peer.CLUENER_LABELS, head="gp", max_length=64, stride=32, decode="flat")
    NerModel(RoFormerEncoder.from_pretrained(encoder), ner_cfg).save(out / "ckpt-ner", tokenizer_from=vocab)
    sim_cfg = SimilarityConfig(pooling="mean", max_length=64)
    SimilarityModel(RoFormerEncoder.from_pretrained(encoder), sim_cfg).save(
        out / "ckpt-sim", tokenizer_from=vocab
    )
    calibration = {}
    for task, key in (("ner", "ner"), ("embed", "similarity")):
        texts, source = train_texts(task)
        calibration[key] = CalibrationTexts(source, texts)
    export_bundle(
        out / "bundle",
        ner=out / "ckpt-ner",
        similarity=out / "ckpt-sim",
        precisions=("fp32", "int8"),
        name=f"peers-{encoder.name}",
        overwrite=True,
        calibration=calibration,
        notes=f"bench/peers.py: {encoder} + random NER head (seed {seed}) + mean pooling; speed only",
    )
    return out / "bundle"


def build_models(encoder: Path, out: Path, venvs: Path, *, seed: int = 0) -> None:
    log.info("ropenlp's checkpoints and bundle from %s -> %s ...", encoder, out)
    build_ropenlp(encoder, out, seed=seed)
    log.info("the peers' folders and ONNX exports (venv %s) ...", venvs / "st")
    cmd = [
        venv_python(venvs, "st"),
        str(PEER),
        "build-st",
        "--encoder",
        str(encoder),
        "--out",
        str(out),
        "--seed",
        str(seed),
    ]
    subprocess.run(cmd, check=True, env=peer_env(1))


def models_ready(models: Path) -> bool:
    need = (
        "bundle/bundle.json",
        "st/onnx/model_qint8_avx512_vnni.onnx",
        "ner-onnx/model_quantized.onnx",
        "infinity/onnx/model_quantized.onnx",
    )
    return all((models / p).is_file() for p in need)


# --------------------------------------------------------------------------------------------
# Workers: one process per variant, in its venv
# --------------------------------------------------------------------------------------------


def peer_env(threads: int) -> dict[str, str]:
    """The same thread limits for everyone; no hub, no telemetry; ROPENLP_* settings not inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROPENLP_")}
    n = str(threads)
    env.update(
        OMP_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
        RAYON_NUM_THREADS=n,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        DO_NOT_TRACK="1",
        TOKENIZERS_PARALLELISM="true",
        PYTHONWARNINGS="ignore",
    )
    return env


class PeerError(RuntimeError):
    pass


class Worker:
    """``bench/peers/peer.py worker`` in a subprocess: one JSON line out, one JSON line back."""

    def __init__(self, name: str, python: str, threads: int, log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}-t{threads}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - open for the worker's life, closed in close()
        self.proc = subprocess.Popen(
            [python, str(PEER), "worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=peer_env(threads),
            text=True,
            encoding="utf-8",
        )

    def ask(self, **msg) -> dict:
        self.proc.stdin.write(json.dumps(msg, ensure_ascii=False) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise PeerError(f"{self.name} exited ({self.proc.poll()}):\n{self.log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise PeerError(f"{self.name}: {reply['error']}\n{self.log_tail()}")
        return reply

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------------------------
# Report maths (pure; tests/test_bench_peers.py)
# --------------------------------------------------------------------------------------------


def ratios(rates: dict[str, float], ours=OURS) -> dict[str, float]:
    """``"ours/peer"`` -> ours' texts/s divided by the peer's, for every variant of ours against every other
    variant (ropenlp-int8/ropenlp-fp32 included)."""
    return {
        f"{a}/{b}": rates[a] / rates[b] for a in ours if a in rates for b in rates if b != a and rates[b] > 0
    }


def variant_row(seconds: list[float], batch_size: int) -> dict:
    """Per-call latency percentiles and texts/s (batch size / median call)."""
    return {**percentiles(seconds), "texts_per_s": batch_size / median(seconds), "seconds": list(seconds)}


def cosines(a, b) -> list[float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1).tolist()


def reversal(vectors) -> dict:
    """Vectors of [s1, rev(s1), s2, rev(s2), ...]: the cosine of each sentence with its reversal."""
    v = np.asarray(vectors, np.float64)
    cos = cosines(v[0::2], v[1::2])
    return {
        "cosine_mean": float(np.mean(cos)),
        "cosine_min": float(np.min(cos)),
        "sentences": len(cos),
        "order_blind": bool(np.min(cos) > 0.99999),
    }


# --------------------------------------------------------------------------------------------
# One (task, threads) group: start the workers, check them, time every batch size
# --------------------------------------------------------------------------------------------


def checks(task: str, workers: dict[str, Worker], texts: list[str]) -> dict:
    sample = texts[:8]
    out: dict = {}
    if task == "embed":
        vecs = {n: w.ask(op="run", task=task, texts=sample)["vectors"] for n, w in workers.items()}
        ref = next(iter(vecs))
        out["cosine_to"] = ref
        out["cosine_min"] = {n: float(min(cosines(vecs[ref], v))) for n, v in vecs.items() if n != ref}
        pairs = [x for s in sample for x in (s, s[::-1])]
        out["reversal"] = {
            n: reversal(w.ask(op="run", task=task, texts=pairs)["vectors"]) for n, w in workers.items()
        }
    else:
        ents = {n: w.ask(op="run", task=task, texts=sample)["entities"] for n, w in workers.items()}
        out["entities_per_text"] = {n: sum(len(e) for e in v) / len(sample) for n, v in ents.items()}
    return out


def run_group(args, task: str, threads: int, texts: list[str], log_dir: Path) -> dict | None:
    variants = [v for v in args.variants if task in TASKS_OF[v]]
    if not variants:
        log.warning("%s: no variant of --variants does it; skipped", task)
        return None
    workers: dict[str, Worker] = {}
    group: dict = {"task": task, "threads": threads, "variants": {}, "cells": []}
    try:
        for name in variants:
            log.info("  starting %s (%d thread(s)) ...", name, threads)
            workers[name] = Worker(name, venv_python(args.venvs, VENV[name]), threads, log_dir)
            info = workers[name].ask(
                op="load", backend=name, task=task, models=str(args.models), threads=threads, texts=texts
            )["info"]
            group["variants"][name] = info
        group["checks"] = checks(task, workers, texts)
        for bs in args.batch_sizes:
            log.info("  %s, %d thread(s), batch %d ...", task, threads, bs)
            group["cells"].append(run_cell(args, workers, bs))
    finally:
        for w in workers.values():
            w.close()
    return group


def run_cell(args, workers: dict[str, Worker], bs: int) -> dict:
    k = args.calls_per_turn
    times: dict[str, list[float]] = {n: [] for n in workers}

    def turn(name: str, record: bool):
        def call(r: int) -> None:
            time.sleep(args.gap_ms / 1e3)
            got = workers[name].ask(op="time", size=bs, start=r * k, calls=k)["seconds"]
            if record:
                times[name] += got

        return call

    for name in workers:  # warm-up turns, untimed
        for r in range(args.warmup):
            turn(name, False)(r)
    rounds = round_robin(
        {n: turn(n, True) for n in workers},
        warmup=0,
        min_rounds=args.min_rounds,
        max_rounds=args.max_rounds,
        seconds=args.seconds,
    )
    cell = {
        "batch_size": bs,
        "rounds": len(next(iter(rounds.values()))),
        "calls_per_turn": k,
        "variants": {n: variant_row(t, bs) for n, t in times.items()},
    }
    cell["ratios"] = ratios({n: v["texts_per_s"] for n, v in cell["variants"].items()})
    return cell


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_report(result: dict) -> None:
    print(
        f"\nropenlp vs peers, in process ({result['encoder']}); load average "
        f"{result['machine']['load_average']} -> {result['load_average_after']}; "
        "'x fp32' / 'x int8': ropenlp-fp32's / ropenlp-int8's texts/s divided by the row's"
    )
    for g in result["groups"]:
        ours = [n for n in OURS if n in g["variants"]]
        print(f"\n{g['task']}, {g['threads']} thread(s)")
        print(
            f"{'batch':>6} {'variant':<18}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'texts/s':>10}"
            + "".join(f"{'x ' + o[8:]:>10}" for o in ours)
        )
        for c in g["cells"]:
            rates = {n: v["texts_per_s"] for n, v in c["variants"].items()}
            for name, v in c["variants"].items():
                vs = "".join(f"{rates[o] / v['texts_per_s']:>10.2f}" for o in ours)
                print(
                    f"{c['batch_size']:>6} {name:<18}{v['n']:>6}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}"
                    f"{v['texts_per_s']:>10.1f}{vs}"
                )
        ck = g.get("checks", {})
        if "cosine_min" in ck:
            print(
                "same weights: min cosine to "
                + ck["cosine_to"]
                + ": "
                + ", ".join(f"{n} {c:.5f}" for n, c in ck["cosine_min"].items())
            )
            print(
                "reversal (cosine of a sentence and its reversal; 1.0 = blind to order): "
                + ", ".join(f"{n} {r['cosine_mean']:.4f}" for n, r in ck["reversal"].items())
            )
        if "entities_per_text" in ck:
            print(
                "entities per text (random heads): "
                + ", ".join(f"{n} {x:.1f}" for n, x in ck["entities_per_text"].items())
            )
    for t in result.get("targets", []):
        print(
            f"target {t['ours']}/{t['peer']} >= {t['target']}: {t['task']} {t['threads']} thread(s) batch "
            f"{t['batch_size']}: {t['ratio']:.2f} ({'met' if t['ratio'] >= t['target'] else 'NOT met'})"
        )


def targets(groups: list[dict]) -> list[dict]:
    out = []
    for g in groups:
        if g["task"] not in TARGETS:
            continue
        ours, peer, target = TARGETS[g["task"]]
        for c in g["cells"]:
            key = f"{ours}/{peer}"
            if key in c["ratios"]:
                out.append(
                    {
                        "task": g["task"],
                        "threads": g["threads"],
                        "batch_size": c["batch_size"],
                        "ours": ours,
                        "peer": peer,
                        "target": target,
                        "ratio": c["ratios"][key],
                    }
                )
    return out


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", type=Path, default=ENCODER, help="the Hugging Face RoFormer folder all share")
    p.add_argument("--models", type=Path, default=RUNS / "models", help="built models (made when missing)")
    p.add_argument("--venvs", type=Path, default=RUNS, help="where bench/peers/setup.sh made the venvs")
    p.add_argument("--rebuild", action="store_true", help="rebuild --models even when present")
    p.add_argument("--build-only", action="store_true", help="build the models and stop")
    p.add_argument("--tasks", default="embed,ner", help="embed, ner")
    p.add_argument(
        "--variants",
        default=None,
        help=f"comma-separated, default: {', '.join(sorted({v for t in DEFAULT_VARIANTS.values() for v in t}))}",
    )
    p.add_argument("--batch-sizes", default="1,32", help="texts per call")
    p.add_argument("--threads", default="2,1", help="threads per worker (one group of cells per value)")
    p.add_argument("--seconds", type=float, default=20.0, help="time budget per cell, all variants together")
    p.add_argument("--calls-per-turn", type=int, default=4, help="calls in a row per variant per round")
    p.add_argument("--gap-ms", type=float, default=20.0, help="idle time before each turn")
    p.add_argument("--warmup", type=int, default=2, help="untimed turns per variant and cell")
    p.add_argument("--min-rounds", type=int, default=3)
    p.add_argument("--max-rounds", type=int, default=1000)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in DEFAULT_VARIANTS]
    if bad:
        p.error(f"unknown task(s): {bad} (tasks: {', '.join(DEFAULT_VARIANTS)})")
    if args.variants is None:
        args.variants = list(dict.fromkeys(v for t in args.tasks for v in DEFAULT_VARIANTS[t]))
    else:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in VENV or v not in TASKS_OF]
    if bad:
        p.error(f"unknown variant(s): {bad} (variants: {', '.join(VENV)})")
    args.batch_sizes, args.threads = _ints(args.batch_sizes), _ints(args.threads)
    if args.calls_per_turn < 1:
        p.error("--calls-per-turn must be at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.rebuild or not models_ready(args.models):
        build_models(args.encoder, args.models, args.venvs)
    if args.build_only:
        return {}
    machine = machine_info()
    texts = {task: load_texts(TEXT_SET[task]) for task in args.tasks}
    groups = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        for threads in args.threads:
            for task in args.tasks:
                log.info("%s, %d thread(s):", task, threads)
                group = run_group(args, task, threads, texts[task][0], Path(tmp))
                if group is not None:
                    groups.append(group)
    result = {
        "bench": "peers",
        "encoder": str(args.encoder),
        "models": str(args.models),
        "texts": {
            t: {
                "set": TEXT_SET[t],
                "description": d,
                "count": len(x),
                "mean_chars": float(np.mean([len(s) for s in x])),
            }
            for t, (x, d) in texts.items()
        },
        "timing": {
            "seconds_per_cell": args.seconds,
            "calls_per_turn": args.calls_per_turn,
            "gap_ms": args.gap_ms,
            "warmup_turns": args.warmup,
            "min_rounds": args.min_rounds,
            "max_rounds": args.max_rounds,
            "order": "round-robin over worker processes, rotated every round; times taken in the worker",
        },
        "machine": machine,
        "groups": groups,
        "targets": targets(groups),
        "load_average_after": machine_info()["load_average"],
    }
    print_report(result)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
