"""Speed of the int8 graph against fp32 (and PyTorch eager) on one bundle task. Not a test.

    python bench/quantize.py BUNDLE_OR_CHECKPOINT [--task ner|similarity] [--threads 2] [--json out.json]
    python bench/quantize.py --random ner --layers 4 --hidden 256     # a random-weight model, for speed only

A checkpoint is first exported to a temporary bundle (fp32 + int8). Variants run over the same padded
batches, alternating in a rotating order within every repeat (the machine may be shared: a busy
neighbour then slows all variants alike), after warm-up; figures are medians over the repeats.
PyTorch eager runs when the checkpoint is known (given, or the bundle's provenance names a directory).

``--ner-output`` also compares the two ways a NER graph can hand out spans, end to end (graph +
numpy decoding): dense masked scores + ``models.spans.decode_batch`` against a graph that thresholds
itself (``Greater -> NonZero -> GatherND``: (N, 4) indices + (N,) scores) + ``spans_from_indices``.
The threshold is set so that about ``--spans-per-text`` spans per text pass, as with a trained model.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import random_checkpoint, round_robin, write_json

log = logging.getLogger("bench.quantize")


# --------------------------------------------------------------------------------------------
# Inputs: bundle, checkpoint, texts
# --------------------------------------------------------------------------------------------


def prepare(args, workdir: Path) -> tuple[Path, Path | None]:
    """(bundle dir, checkpoint dir or None)."""
    from export.onnx import detect_task, export_bundle

    if args.random:
        ckpt = random_checkpoint(args.random, workdir / "ckpt", layers=args.layers, hidden=args.hidden)
    else:
        ckpt = args.checkpoint
        path = Path(args.path)
        if (path / "bundle.json").is_file():
            if ckpt is None:
                from models.bundle import load_manifest

                base = load_manifest(path).provenance.base_checkpoint
                ckpt = Path(base) if base and Path(base).is_dir() else None
            return path, ckpt
        ckpt = path
    task = detect_task(ckpt)
    bundle = workdir / "bundle"
    log.info("exporting %s (%s) to a temporary bundle (fp32 + int8)", ckpt, task)
    from ropenlp.export import calibration_for  # static int8: the training data the checkpoint's run recorded

    export_bundle(bundle, **{task: ckpt}, precisions=("fp32", "int8"),
                  calibration=calibration_for({task: Path(ckpt)}, [], [task]))
    return bundle, ckpt


def load_texts(args) -> list[str]:
    from export.parity import SAMPLE_TEXTS, read_sample_file

    base = read_sample_file(args.texts) if args.texts else list(SAMPLE_TEXTS)
    return [base[k % len(base)] for k in range(args.num_texts)]


# --------------------------------------------------------------------------------------------
# Runners: Batch -> output (one callable per variant)
# --------------------------------------------------------------------------------------------


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, threads: int):
    session = ort_session(path, threads)
    return lambda batch: session.run(None, batch.feeds)[0]


def torch_runner(task: str, ckpt: Path, threads: int):
    import torch

    from export.graphs import NerGraph, SimilarityGraph
    from models.tasks import load_ner, load_similarity

    torch.set_num_threads(threads)
    graph = NerGraph(load_ner(ckpt)) if task == "ner" else SimilarityGraph(load_similarity(ckpt))
    graph.eval()

    def run(batch):
        with torch.inference_mode():
            return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

    return run


def alternate(runners: dict, batches, *, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per pass over all batches, per variant; variants interleaved in a rotating order."""
    passes = {name: (lambda r, run=run: [run(b) for b in batches]) for name, run in runners.items()}
    return round_robin(passes, warmup=warmup, min_rounds=repeats, max_rounds=repeats)


# --------------------------------------------------------------------------------------------
# Dense scores vs thresholded spans (NER)
# --------------------------------------------------------------------------------------------


def thresholded_graph(src: Path, dst: Path, threshold: float) -> Path:
    """Append Greater -> NonZero -> Transpose / GatherND to a NER graph: outputs span_indices (N, 4)
    int64 = (batch, type, i, j) and span_scores (N,) float32, in place of the dense scores."""
    import onnx
    from onnx import TensorProto, helper

    from export.convert import save

    model = onnx.load(str(src))
    g = model.graph
    scores = g.output[0].name
    g.initializer.append(helper.make_tensor("span_threshold", TensorProto.FLOAT, [], [threshold]))
    g.node.extend([
        helper.make_node("Greater", [scores, "span_threshold"], ["span_hit"], name="span_greater"),
        helper.make_node("NonZero", ["span_hit"], ["span_nz"], name="span_nonzero"),  # (4, N)
        helper.make_node("Transpose", ["span_nz"], ["span_indices"], perm=[1, 0], name="span_transpose"),
        helper.make_node("GatherND", [scores, "span_indices"], ["span_scores"], name="span_gather"),
    ])
    del g.output[:]
    g.output.extend([
        helper.make_tensor_value_info("span_indices", TensorProto.INT64, ["spans", 4]),
        helper.make_tensor_value_info("span_scores", TensorProto.FLOAT, ["spans"]),
    ])
    return save(model, dst)


def ner_output_comparison(bundle: Path, manifest, batches, texts, args, workdir: Path) -> dict:
    from export.parity import span_mask
    from models.spans import decode_batch, spans_from_indices

    spec = manifest.tasks["ner"]
    dense_path = bundle / spec.graphs["fp32"].file
    dense = ort_session(dense_path, args.threads)
    valid = []
    for b in batches:
        s = dense.run(None, b.feeds)[0]  # (B, C, T, T)
        valid.append(s[np.broadcast_to(span_mask(b.attention_mask), s.shape)])
    valid = np.sort(np.concatenate(valid))
    hits = args.spans_per_text * len(texts)
    threshold = float(valid[-hits - 1]) if hits < len(valid) else float(valid[0]) - 1
    sparse = ort_session(thresholded_graph(dense_path, workdir / "ner.spans.onnx", threshold), args.threads)
    labels = spec.labels

    def run_dense(b):
        s = dense.run(None, b.feeds)[0]
        return decode_batch(s, offsets_list=b.offsets, labels=labels, texts=[texts[t] for t in b.owners],
                            threshold=threshold)

    def run_sparse(b):
        idx, sc = sparse.run(None, b.feeds)
        return spans_from_indices(idx, sc, offsets_list=b.offsets, labels=labels, texts=[texts[t] for t in b.owners])

    same = all(run_dense(b) == run_sparse(b) for b in batches)
    times = alternate({"dense+decode_batch": run_dense, "thresholded+spans_from_indices": run_sparse}, batches,
                      warmup=args.warmup, repeats=args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"threshold": threshold, "entities_per_text": hits / len(texts), "same_entities": same,
            "seconds_per_pass": med,
            "thresholded_speedup": med["dense+decode_batch"] / med["thresholded+spans_from_indices"]}


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", help="a bundle directory or a task checkpoint directory")
    p.add_argument("--random", choices=["ner", "similarity"], help="benchmark a random-weight model instead")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--checkpoint", type=Path, help="the checkpoint of a bundle, for the PyTorch eager reference")
    p.add_argument("--task", choices=["ner", "similarity"], help="which task of a two-task bundle")
    p.add_argument("--texts", help="texts file (one per line, or JSONL with \"text\"); default: built-in sample")
    p.add_argument("--num-texts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (ORT and torch)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference")
    p.add_argument("--ner-output", action="store_true", help="also compare dense vs thresholded NER outputs")
    p.add_argument("--spans-per-text", type=int, default=5)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if not args.path and not args.random:
        p.error("give a bundle or checkpoint directory, or --random ner|similarity")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from export import parity
    from models.bundle import load_manifest
    from models.text import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        bundle, ckpt = prepare(args, workdir)
        manifest = load_manifest(bundle)
        task = args.task or next(iter(manifest.tasks))
        spec = manifest.tasks[task]
        missing = [p for p in ("fp32", "int8") if p not in spec.graphs]
        if missing:
            p.error(f"{bundle}: the {task} task has no {' or '.join(missing)} graph")
        tok = Tokenizer.load(bundle / manifest.tokenizer)
        texts = load_texts(args)
        if task == "ner":
            batches = parity.ner_batches(tok, texts, max_length=spec.max_length, stride=spec.stride,
                                         batch_size=args.batch_size)
        else:
            batches = parity.sim_batches(tok, texts, max_length=spec.max_length, batch_size=args.batch_size)
        runners = {p: ort_runner(bundle / spec.graphs[p].file, args.threads) for p in ("fp32", "int8")}
        if ckpt is not None and not args.no_torch:
            runners["torch-eager"] = torch_runner(task, ckpt, args.threads)
        times = alternate(runners, batches, warmup=args.warmup, repeats=args.repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        tokens = int(sum(b.attention_mask.sum() for b in batches))
        result = {
            "bundle": str(args.path or f"random {args.random} {args.layers}x{args.hidden}"),
            "task": task,
            "machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0]},
            "threads": args.threads, "texts": len(texts), "rows": sum(len(b.owners) for b in batches),
            "tokens": tokens, "batch_size": args.batch_size, "repeats": args.repeats,
            "variants": {k: {"seconds_per_pass": v, "texts_per_s": len(texts) / v,
                             "all_seconds": times[k]} for k, v in med.items()},
            "int8_vs_fp32": med["fp32"] / med["int8"],
        }
        if "torch-eager" in med:
            result["fp32_vs_torch"] = med["torch-eager"] / med["fp32"]
            result["int8_vs_torch"] = med["torch-eager"] / med["int8"]
        if args.ner_output and task == "ner":
            result["ner_output"] = ner_output_comparison(bundle, manifest, batches, texts, args, workdir)

    print(f"\n{task}: {len(texts)} texts, {result['rows']} rows, {tokens} tokens, batch {args.batch_size}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'variant':<14}{'s/pass':>10}{'texts/s':>10}{'vs fp32':>9}")
    for k, v in result["variants"].items():
        print(f"{k:<14}{v['seconds_per_pass']:>10.4f}{v['texts_per_s']:>10.1f}{med['fp32'] / med[k]:>8.2f}x")
    if "ner_output" in result:
        r = result["ner_output"]
        print(f"\nNER output ({r['entities_per_text']:.1f} entities/text, same entities: {r['same_entities']}):")
        for k, v in r["seconds_per_pass"].items():
            print(f"  {k:<32}{v:>10.4f} s/pass")
        print(f"  thresholded-in-graph speed-up: {r['thresholded_speedup']:.2f}x")
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
