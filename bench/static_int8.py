"""Static (calibrated) int8 against fp32 and dynamic int8 on a random-weight model: which MatMuls get
quantized, accuracy per calibration method, batch invariance, and speed with session settings. Not a test.

    python bench/static_int8.py                                  # 4 x 256 like service/bundles/default
    python bench/static_int8.py --layers 12 --hidden 768 --calibration 128 --json out.json

Steps: a random two-task bundle (``bench.common.random_bundle``: fp32 = ONNX Runtime's offline
optimiser output, int8-dynamic) plus each task's raw ``torch.onnx.export`` graph; static int8 from
either graph (``export.quantize_static``), calibrated on ``--calibration`` texts drawn (seeded) from
the training split (CLUENER train for NER, STS-B train sentences for similarity), one unpadded window
per batch. Accuracy: every evaluation text (dev split) alone, against the fp32 graph: NER scores on
real spans (i <= j), similarity vectors. Invariance: ``max_batch_dependence`` (each text alone vs in
shuffled padded batches of 8). Speed (NER): texts/s at batch 1 and 32, 1 intra-op thread, variants
interleaved (``bench.common.round_robin``), medians. Random weights say nothing about dev F1: run
the exporter's parity / ``ropenlp evaluate`` on trained models for that.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import REPO, SHARED_DATA, machine_info, median, random_bundle, round_robin, write_json

log = logging.getLogger("bench.static_int8")
PREFIX = {"ner": "ner", "similarity": "sim"}


# --------------------------------------------------------------------------------------------
# Model and texts
# --------------------------------------------------------------------------------------------


def train_texts(task: str, data: Path = SHARED_DATA) -> list[str]:
    """The task's training texts (calibration draws from these): CLUENER train / STS-B train sentences."""
    if task == "ner":
        with open(data / "cluener" / "train.json", encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()]
    with open(data / "stsb_zh" / "train.tsv", encoding="utf-8") as f:
        return [c for line in f for c in line.rstrip("\n").split("\t")[:2] if c.strip()]


def dev_texts(task: str, n: int, data: Path = SHARED_DATA) -> list[str]:
    from bench.common import load_texts

    return load_texts("cluener" if task == "ner" else "stsb", data=data)[0][:n]


def prepare(workdir: Path, *, layers: int, hidden: int, like: Path | None) -> tuple[Path, dict[str, Path]]:
    """(bundle, {task: raw graph}); reused when ``workdir`` already holds them."""
    import torch  # noqa: F401  (the raw export needs it)

    from export.graphs import NerGraph, SimilarityGraph, to_onnx
    from export.tasks import EXPORTERS
    from models.tasks import load_ner, load_similarity

    bundle = workdir / "bundle"
    if not (bundle / "bundle.json").is_file():
        texts = train_texts("ner")[:2000] + train_texts("similarity")[:2000]
        random_bundle(workdir, layers=layers, hidden=hidden, texts=texts, like=like,
                      precisions=("fp32", "int8-dynamic"))
    raw = {}
    for task, loader, wrap in (("ner", load_ner, NerGraph), ("similarity", load_similarity, SimilarityGraph)):
        raw[task] = workdir / f"{PREFIX[task]}.raw.onnx"
        if not raw[task].is_file():
            exp = EXPORTERS[task]
            to_onnx(wrap(loader(workdir / f"ckpt-{task}")).eval(), raw[task], output=exp.output,
                    output_axes=exp.output_axes)
    return bundle, raw


def session(path: Path, *, level: str = "all", spinning: bool | None = None, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------
# Accuracy and invariance
# --------------------------------------------------------------------------------------------


def rows_of(task: str, bundle: Path, texts: list[str]) -> list[np.ndarray]:
    """Token ids of every window (NER) / text (similarity), cut as the service cuts them."""
    from export.onnx import calibration_from_bundle

    feeds = calibration_from_bundle(bundle, task, texts, n=len(texts), seed=0)
    return [f["input_ids"][0] for f in feeds]


def outputs_alone(path: Path, task: str, rows: list[np.ndarray]) -> list[np.ndarray]:
    s = session(path)
    out = []
    for r in rows:
        y = s.run(None, {"input_ids": r[None], "attention_mask": np.ones((1, len(r)), np.int64)})[0][0]
        out.append(y[:, np.triu(np.ones((len(r), len(r)), bool))].ravel() if task == "ner" else y)
    return out


def accuracy(got: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
    d = np.concatenate([np.abs(a.astype(np.float64) - b) for a, b in zip(got, ref, strict=True)])
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean())}


def variants(task: str, raw: Path, opt: Path) -> dict[str, tuple[Path, dict]]:
    """name -> (fp32 source graph, quantize_static_int8 options)."""
    out = {
        "raw minmax": (raw, {}),
        "raw entropy": (raw, {"method": "entropy"}),
        "raw percentile 99.99": (raw, {"method": "percentile", "percentile": 99.99}),
        "raw percentile 99.999": (raw, {"method": "percentile", "percentile": 99.999}),
        "opt minmax": (opt, {}),
    }
    if task == "ner":
        out |= {
            "raw minmax +attention": (raw, {"quantize_attention": True}),
            "opt minmax qoperator": (opt, {"quant_format": "qoperator"}),
        }
    return out


def quality(task: str, bundle: Path, raw: Path, workdir: Path, *, calibration: int, seed: int,
            eval_texts: int) -> tuple[list[dict], dict[str, Path]]:
    from export.onnx import calibration_from_bundle
    from export.quantize_static import max_batch_dependence, quantize_static_int8
    from models.bundle import load_manifest
    from models.text import Tokenizer

    manifest = load_manifest(bundle, verify_hashes=False)
    pad_id = Tokenizer.load(bundle / manifest.tokenizer).pad_id
    prefix = PREFIX[task]
    opt, dyn = bundle / f"{prefix}.fp32.onnx", bundle / f"{prefix}.int8-dynamic.onnx"
    feeds = calibration_from_bundle(bundle, task, train_texts(task), n=calibration, seed=seed)
    rows = rows_of(task, bundle, dev_texts(task, eval_texts))
    ref = outputs_alone(opt, task, rows)
    table, graphs = [], {"fp32 opt": opt, "fp32 raw": raw, "dynamic int8": dyn}
    for name, path in graphs.items():
        table.append({"task": task, "variant": name, **accuracy(outputs_alone(path, task, rows), ref),
                      "batch_dependence": max_batch_dependence(session(path), rows, pad_id=pad_id)})
    for name, (src, options) in variants(task, raw, opt).items():
        dst = workdir / f"{prefix}.static.{name.replace(' ', '_').replace('+', '')}.onnx"
        report = quantize_static_int8(src, dst, feeds, **options)
        graphs[f"static {name}"] = dst
        table.append({"task": task, "variant": f"static {name}",
                      **accuracy(outputs_alone(dst, task, rows), ref),
                      "batch_dependence": max_batch_dependence(session(dst), rows, pad_id=pad_id),
                      "matmuls_int8": report.matmuls_quantized, "matmuls": report.matmuls,
                      "const_weight_int8": f"{report.matmuls_const_weight_quantized}/{report.matmuls_const_weight}",
                      "untyped_before": report.untyped_before, "calibration_batches": report.calibration_batches,
                      "quantize_s": round(report.seconds, 1)})
        log.info("%s %s: %s", task, name, table[-1])
    return table, graphs


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------


def speed(graphs: dict[str, tuple[Path, dict]], bundle: Path, texts: list[str], *, batch_sizes=(1, 32),
          seconds: float) -> list[dict]:
    """texts/s per (variant, batch size): NER windows padded per batch as the service pads them."""
    from export.parity import ner_batches
    from models.bundle import load_manifest
    from models.text import Tokenizer

    manifest = load_manifest(bundle, verify_hashes=False)
    tok = Tokenizer.load(bundle / manifest.tokenizer)
    sessions = {name: session(path, **opts) for name, (path, opts) in graphs.items()}
    table = []
    for bs in batch_sizes:
        batches = ner_batches(tok, texts, max_length=manifest.ner.max_length, stride=manifest.ner.stride,
                              batch_size=bs)
        calls = {name: (lambda r, s=s, b=batches: s.run(None, b[r % len(b)].feeds)) for name, s in sessions.items()}
        times = round_robin(calls, warmup=2, min_rounds=5, seconds=seconds)
        for name, t in times.items():
            rows = median([len(b.owners) for b in batches])
            table.append({"variant": name, "batch": bs, "texts_per_s": round(rows / median(t), 1), "calls": len(t)})
    return table


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def print_table(rows: list[dict], columns: list[str]) -> None:
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [f"{r[c]:.3g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        print("| " + " | ".join(cells) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="keep the random bundle and graphs here (reused when present)")
    p.add_argument("--like", type=Path, default=REPO / "service" / "bundles" / "default")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--calibration", type=int, default=256, help="calibration texts drawn from the training split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-texts", type=int, default=64)
    p.add_argument("--speed-texts", type=int, default=256)
    p.add_argument("--seconds", type=float, default=8.0, help="timing budget per batch size and table")
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("export").setLevel(logging.WARNING)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-static-int8-")
        args.workdir = Path(tmp.name)
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle, raw = prepare(args.workdir, layers=args.layers, hidden=args.hidden, like=args.like)
    result: dict = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}

    quality_rows, graphs = [], {}
    for task in ("ner", "similarity"):
        rows, g = quality(task, bundle, raw[task], args.workdir, calibration=args.calibration, seed=args.seed,
                          eval_texts=args.eval_texts)
        quality_rows += rows
        graphs[task] = g
    result["quality"] = quality_rows
    print(f"\n{args.layers} x {args.hidden} random weights; calibration {args.calibration} texts (seed {args.seed}), "
          f"{args.eval_texts} dev texts; accuracy against the fp32 (optimised) graph, each text alone\n")
    print_table(quality_rows, ["task", "variant", "matmuls_int8", "matmuls", "const_weight_int8", "max_abs_diff",
                               "mean_abs_diff", "batch_dependence", "quantize_s"])

    if not args.no_speed:
        texts = dev_texts("ner", args.speed_texts)
        g = graphs["ner"]
        main_variants = {name: (g[name], {}) for name in
                         ("fp32 opt", "fp32 raw", "dynamic int8", "static opt minmax", "static raw minmax",
                          "static raw minmax +attention", "static opt minmax qoperator")}
        result["speed"] = speed(main_variants, bundle, texts, seconds=args.seconds)
        settings = {f"static raw minmax, {lvl}, spinning {spin}": (g["static raw minmax"],
                                                                   {"level": lvl, "spinning": spin})
                    for lvl in ("all", "extended") for spin in (True, False)}
        settings |= {f"fp32 raw, {lvl}": (g["fp32 raw"], {"level": lvl}) for lvl in ("all", "extended")}
        result["settings"] = speed(settings, bundle, texts, seconds=args.seconds)
        print(f"\nNER speed, texts/s, 1 intra-op thread, {len(texts)} CLUENER dev texts, interleaved, medians "
              f"(load average {machine_info()['load_average']})\n")
        print_table(result["speed"] + result["settings"], ["variant", "batch", "texts_per_s", "calls"])
    write_json(args.json, result)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
