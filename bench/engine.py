"""Speed of the serving engine: ONNX Runtime (fp32, int8) against PyTorch eager on the same weights. Not a test.

    python bench/engine.py --bundle DIR [--checkpoint-ner DIR --checkpoint-sim DIR] [--json out.json]
    python bench/engine.py --bundle-fp32 DIR --bundle-int8 DIR --checkpoint-ner DIR --checkpoint-sim DIR
    python bench/engine.py --bundle DIR --profile          # where Engine time goes: tokenize/pad/run/decode
    python bench/engine.py --random --layers 2 --hidden 64 --seconds 1 --batch-sizes 1,8   # quick check

Every variant runs through the same ``service.core.Engine`` (validation, tokenization, NER windows,
token-budget batches, decoding, window merging); only the model runtime behind it differs:

* ``ort-fp32``, ``ort-int8``: the bundle's graphs on ONNX Runtime (CPU; the server's session options).
* ``torch``: ``models.tasks`` NerModel / SimilarityModel loaded from the checkpoint the bundle was
  exported from, in the ``export.graphs`` wrappers (exactly what was exported), eager, inference mode.
* ``hf``: ``transformers.RoFormerModel`` loaded from the same checkpoint + our head (GlobalPointer, or
  pooling + whitening + L2) on its hidden states.

Cells are (text set, batch size): ``cluener`` (NER, short news sentences), ``stsb`` (embeddings),
``cmeee-long`` (NER on ~500-char documents, several windows each), texts from ``../shared/data``.
A call is one Engine request of ``batch size`` texts; the engine cuts it into model batches of at most
``--batch-tokens`` padded tokens, as the server does. Within a cell every round calls every variant
once on the same texts, in a rotating order (``bench.common.round_robin``), after warm-up; a cell
stops after ``--repeats`` rounds or ``--seconds``, whichever first (at least ``--min-repeats``).

Figures: per call p50 / p99 latency, texts/s (batch size / median latency), achieved GFLOP/s (matmul
FLOPs of the padded batches counted from the checkpoint's config, ``bench.common.encoder_flops``) and
its share of this CPU's peak (``--peak-fp32``, ``--peak-int8``), speed-up against ``torch``, and how
far each variant's output is from the first variant's (entities identical / largest vector difference).
``--profile`` runs the ONNX Runtime variants only and splits end-to-end time into stages (timers
around Engine methods, no change to service code): tokenize (``prepare_*``: validation, tokenizer,
windows), pad (``run_batch`` minus the model and decoding: padding, feeds), run (the session),
decode (the task's ``postprocess``: spans above the threshold), finish (merging windows / stacking vectors),
other (batch planning, loop). The decode share (decode + finish) is checked against ``--decode-target``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import (
    write_json,
    PEAK_GFLOPS,
    TEXT_SETS,
    bundle_checkpoints,
    checkpoint_config,
    chunk,
    encoder_flops,
    load_texts,
    machine_info,
    median,
    ner_head_flops,
    percentiles,
    random_bundle,
    round_robin,
    sim_head_flops,
)

log = logging.getLogger("bench.engine")

SET_TASK = {"cluener": "ner", "cmeee-long": "ner", "stsb": "similarity"}
ALL_VARIANTS = ("ort-fp32", "ort-int8", "torch", "hf")
STAGES = ("tokenize", "pad", "run", "decode", "finish", "other")


# --------------------------------------------------------------------------------------------
# PyTorch behind the Runtime protocol (so the torch variants run through the same Engine)
# --------------------------------------------------------------------------------------------


class TorchRuntime:
    """``service.runtime.Runtime`` over torch callables ``(input_ids, attention_mask) -> tensor``."""

    provider = "torch"

    def __init__(self, graphs: dict[str, Callable]):
        self.graphs = graphs
        self.precision = {task: "fp32" for task in graphs}

    def inputs(self, task: str) -> list[str]:
        return ["input_ids", "attention_mask"]

    def run(self, task: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.graphs[task](
                torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
            )
        return out.float().numpy()


def our_graph(task: str, ckpt: Path) -> Callable:
    """The export wrapper around our model: what the bundle's graph was exported from."""
    from export.graphs import NerGraph, SimilarityGraph
    from models.tasks import load_ner, load_similarity

    graph = NerGraph(load_ner(ckpt)) if task == "ner" else SimilarityGraph(load_similarity(ckpt))
    return graph.eval().requires_grad_(False)


def hf_graph(task: str, ckpt: Path) -> Callable:
    """``transformers.RoFormerModel`` from the checkpoint's encoder + our head on its hidden states."""
    import transformers
    from transformers import RoFormerModel

    from export.graphs import l2_normalize
    from models.tasks import load_ner, load_similarity

    transformers.logging.set_verbosity_error()  # the task checkpoint's pooler / head keys are not RoFormerModel's
    transformers.logging.disable_progress_bar()
    hf = RoFormerModel.from_pretrained(str(ckpt)).eval().requires_grad_(False)
    if getattr(hf.config, "entropy_invariant_scale", False):
        log.warning(
            "%s uses the entropy-invariant attention scale: transformers ignores it (hf outputs differ)", ckpt
        )
    if task == "ner":
        head = load_ner(ckpt).head.eval().requires_grad_(False)

        def run_ner(ids, mask):
            return head(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask)  # (B, C, T, T)

        return run_ner
    sim = load_similarity(ckpt).eval().requires_grad_(False)
    every_layer = sim.pooling.needs_hidden_states

    def run_sim(ids, mask):
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=every_layer)
        x = sim.pooling(out.hidden_states if every_layer else out.last_hidden_state, mask)  # (B, H)
        if sim.whitening is not None:
            x = sim.whitening(x)  # (B, k)
        return l2_normalize(x.float())

    return run_sim


# --------------------------------------------------------------------------------------------
# Variants and the stage timers
# --------------------------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    engine: object  # service.core.Engine
    precision: str  # fp32 | int8: which peak the GFLOP/s are compared with
    acc: dict[str, float] = field(default_factory=dict)  # stage seconds of the current call
    stages: list[dict[str, float]] = field(default_factory=list)  # per call

    @property
    def tasks(self) -> set[str]:
        return set(getattr(self.engine.runtime, "graphs", None) or self.engine.manifest.tasks)

    def timed(self, stage: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.acc[stage] = self.acc.get(stage, 0.0) + time.perf_counter() - t0

        return wrapper

    def instrument(self) -> None:
        """Timers around the runtime's ``run``, ``Engine.run_batch`` and each task's ``postprocess`` (instance
        attributes shadow the methods; service code is untouched)."""
        e = self.engine
        e.runtime.run = self.timed("run", e.runtime.run)
        e.run_batch = self.timed("batch", e.run_batch)
        e.finish = self.timed("finish", e.finish)  # a job's answer from its rows' outputs
        for name in e.manifest.tasks:  # each task's postprocess: the span decoding of NER, pooling's finish
            task = e.task(name)
            task.postprocess = self.timed("decode", task.postprocess)

    def call(self, task: str, texts: list[str], threshold: float | None):
        """One Engine request, end to end; its stage times appended to ``stages``."""
        self.acc = {}
        t0 = time.perf_counter()
        if task == "ner":
            job = self.engine.prepare("ner", self.engine.query("ner", texts=texts, threshold=threshold))
        else:
            job = self.engine.prepare("embed", self.engine.query("embed", texts=texts))
        t1 = time.perf_counter()
        result = self.engine.execute(job)
        total = time.perf_counter() - t0
        a = self.acc
        run, decode, batch, finish = (
            a.get("run", 0.0),
            a.get("decode", 0.0),
            a.get("batch", 0.0),
            a.get("finish", 0.0),
        )
        self.stages.append(
            {
                "tokenize": t1 - t0,
                "pad": batch - run - decode,
                "run": run,
                "decode": decode,
                "finish": finish,
                "other": total - (t1 - t0) - batch - finish,
                "total": total,
            }
        )
        return result


def load_variants(args, bundles: dict[str, Path], ckpts: dict[str, Path], limits) -> list[Variant]:
    from models.bundle import BundleError, load_manifest
    from models.text import Tokenizer
    from service.core import Engine

    variants: list[Variant] = []
    for precision in ("fp32", "int8"):
        name = f"ort-{precision}"
        if name not in args.variants:
            continue
        if precision not in bundles:
            log.warning("%s skipped: no %s bundle", name, precision)
            continue
        try:
            engine = Engine.load(
                bundles[precision],
                limits=limits,
                provider="cpu",
                precision=precision,
                intra_op_threads=args.threads,
                inter_op_threads=1,
            )
        except BundleError as e:  # e.g. int8 graphs for one task only
            log.warning("%s skipped: %s", name, e)
            continue
        variants.append(Variant(name, engine, precision))
    torch_names = [n for n in ("torch", "hf") if n in args.variants]
    if torch_names:
        if not ckpts:
            log.warning(
                "%s skipped: no checkpoint (give --checkpoint-ner / --checkpoint-sim)", ", ".join(torch_names)
            )
            return variants
        import torch

        torch.set_num_threads(args.threads)
        ref = next(iter(bundles.values()))
        manifest = load_manifest(ref)
        tokenizer = Tokenizer.load(ref / manifest.tokenizer, lowercase=manifest.lowercase)
        for name in torch_names:
            build = our_graph if name == "torch" else hf_graph
            graphs = {task: build(task, ckpt) for task, ckpt in ckpts.items() if task in manifest.tasks}
            engine = Engine(TorchRuntime(graphs), tokenizer, manifest, limits=limits)
            variants.append(Variant(name, engine, "fp32"))
    return variants


# --------------------------------------------------------------------------------------------
# One cell: (text set, batch size)
# --------------------------------------------------------------------------------------------


def call_costs(engine, task: str, texts: list[str], configs: dict[str, dict]) -> dict:
    """Rows, model batches, padded / real tokens and matmul FLOPs of one Engine request."""
    from models.batches import MAX_PADDING, plan_batches

    op = "ner" if task == "ner" else "embed"
    job = engine.prepare(op, engine.query(op, texts=texts))
    lengths = [len(s) for s in job.seqs]
    batches = plan_batches(lengths, engine.limits.batch_tokens, max_padding=MAX_PADDING)  # as Engine.execute
    shapes = [(len(b), max(lengths[k] for k in b)) for b in batches]  # (rows, padded length)
    out = {
        "rows": len(lengths),
        "batches": len(batches),
        "real_tokens": sum(lengths),
        "padded_tokens": sum(B * T for B, T in shapes),
        "flops": None,
    }
    cfg = configs.get(task)
    if cfg is not None:
        enc, m = cfg["encoder"], engine.manifest
        flops = sum(encoder_flops(enc, B, T) for B, T in shapes)
        if task == "ner":
            flops += sum(
                ner_head_flops(cfg["head"], enc["hidden_size"], len(m.tasks["ner"].labels), B, T) for B, T in shapes
            )
        else:
            s = m.tasks["similarity"]
            flops += sim_head_flops(s.pooling, enc["hidden_size"], s.dim, s.whitening, len(lengths))
        out["flops"] = flops
    return out


def agreement(task: str, ref, got) -> dict:
    """How far a variant's answer is from the reference variant's on the same texts."""
    if task == "ner":
        same = [
            [(e.start, e.end, e.label) for e in a] == [(e.start, e.end, e.label) for e in b]
            for a, b in zip(ref.entities, got.entities)
        ]
        return {
            "texts_same_entities": float(np.mean(same)),
            "entities": int(sum(len(x) for x in got.entities)),
            "entities_ref": int(sum(len(x) for x in ref.entities)),
        }
    diff = np.abs(np.asarray(ref.vectors, np.float64) - np.asarray(got.vectors, np.float64))
    cos = np.sum(np.asarray(ref.vectors, np.float64) * np.asarray(got.vectors, np.float64), axis=1)
    return {"vector_max_abs_diff": float(diff.max()), "cosine_to_ref_min": float(cos.min())}


def run_cell(
    args,
    set_name: str,
    texts: list[str],
    bs: int,
    variants: list[Variant],
    configs: dict,
    threshold: float | None,
) -> dict:
    task = SET_TASK[set_name]
    active = [v for v in variants if task in v.tasks]
    if not active:
        return {}
    costs_cache: dict[int, dict] = {}

    def costs(r: int) -> dict:
        if r not in costs_cache:
            costs_cache[r] = call_costs(active[0].engine, task, chunk(texts, bs, r), configs)
        return costs_cache[r]

    ref_out = active[0].call(task, chunk(texts, bs, 0), threshold)
    agree = {
        v.name: agreement(task, ref_out, v.call(task, chunk(texts, bs, 0), threshold)) for v in active[1:]
    }
    for v in active:
        v.stages.clear()
    calls = {v.name: (lambda r, v=v: v.call(task, chunk(texts, bs, r), threshold)) for v in active}
    times = round_robin(
        calls, warmup=args.warmup, min_rounds=args.min_repeats, max_rounds=args.repeats, seconds=args.seconds
    )
    rounds = len(next(iter(times.values())))
    per_call = [costs(r) for r in range(rounds)]
    cell = {
        "set": set_name,
        "task": task,
        "batch_size": bs,
        "rounds": rounds,
        "rows_per_call": median([c["rows"] for c in per_call]),
        "model_batches_per_call": median([c["batches"] for c in per_call]),
        "real_tokens_per_call": median([c["real_tokens"] for c in per_call]),
        "padded_tokens_per_call": median([c["padded_tokens"] for c in per_call]),
        "gflop_per_call": (median([c["flops"] for c in per_call]) / 1e9 if per_call[0]["flops"] else None),
        "variants": {},
    }
    for v in active:
        t = times[v.name]
        stages = v.stages[-len(t) :]
        total = sum(s["total"] for s in stages)
        row = {
            "precision": v.precision,
            **percentiles(t),
            "texts_per_s": bs / median(t),
            "rows_per_s": median([c["rows"] / s for c, s in zip(per_call, t)]),
            "stage_share": {k: sum(s[k] for s in stages) / total for k in STAGES},
            "seconds": t,
        }
        if per_call[0]["flops"]:
            row["gflops_per_s"] = median([c["flops"] / s for c, s in zip(per_call, t)]) / 1e9
            row["peak_gflops"] = args.peak[v.precision]
            row["share_of_peak"] = row["gflops_per_s"] / args.peak[v.precision]
        if v.name in agree:
            row["agreement"] = agree[v.name]
        cell["variants"][v.name] = row
    base = cell["variants"].get("torch")
    for row in cell["variants"].values():
        if base:
            row["speedup_vs_torch"] = row["texts_per_s"] / base["texts_per_s"]
    return cell


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def resolve_inputs(args, workdir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """({precision: bundle dir}, {task: checkpoint dir})."""
    from models.bundle import load_manifest
    from service.settings import DEFAULT_BUNDLE

    if args.random:
        sample = [t for s in args.sets for t in load_texts(s, long_chars=args.long_chars)[0]]
        bundle, ckpts = random_bundle(
            workdir, layers=args.layers, hidden=args.hidden, texts=sample, like=args.like
        )
        return {"fp32": bundle, "int8": bundle}, ckpts
    bundles: dict[str, Path] = {}
    if args.bundle_fp32:
        bundles["fp32"] = args.bundle_fp32
    if args.bundle_int8:
        bundles["int8"] = args.bundle_int8
    if not bundles:
        bundle = args.bundle or DEFAULT_BUNDLE
        if not (bundle / "bundle.json").is_file():
            raise SystemExit(
                f"{bundle}: no bundle.json (give --bundle DIR, --bundle-fp32/--bundle-int8, or --random)"
            )
        m = load_manifest(bundle)
        have = {p for t in m.tasks.values() for p in t.graphs}
        bundles = {p: bundle for p in ("fp32", "int8") if p in have}
    ckpts: dict[str, Path] = {}
    for b in bundles.values():
        ckpts = bundle_checkpoints(b) | ckpts
    if args.checkpoint_ner:
        ckpts["ner"] = args.checkpoint_ner
    if args.checkpoint_sim:
        ckpts["similarity"] = args.checkpoint_sim
    return bundles, ckpts


def calibrate_threshold(engine, texts: list[str], per_text: float) -> float:
    """A span threshold that lets about ``per_text`` entities per text through (random models score
    around 0, where the bundle's threshold would pass a large share of all T^2 spans)."""
    from export.parity import ner_batches, span_mask

    batches = ner_batches(
        engine.tokenizer, texts, max_length=engine.task("ner").max_length, stride=engine.task("ner").stride, batch_size=16
    )
    valid = []
    for b in batches:
        s = engine.runtime.run("ner", b.feeds)  # (B, C, T, T)
        valid.append(s[np.broadcast_to(span_mask(b.attention_mask), s.shape)])
    valid = np.sort(np.concatenate(valid))
    hits = int(per_text * len(texts))
    return float(valid[-hits - 1]) if hits < len(valid) else float(valid[0]) - 1.0


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def print_table(cells: list[dict]) -> None:
    print(
        f"\n{'set':<11}{'batch':>6} {'variant':<9}{'n':>4}{'p50 ms':>9}{'p99 ms':>9}{'texts/s':>9}"
        f"{'GFLOP/s':>9}{'%peak':>7}{'vs torch':>9}  agreement"
    )
    for c in cells:
        for name, v in c["variants"].items():
            g = (
                f"{v['gflops_per_s']:>9.1f}{100 * v['share_of_peak']:>6.1f}%"
                if "gflops_per_s" in v
                else f"{'-':>9}{'-':>7}"
            )
            sp = f"{v['speedup_vs_torch']:>8.2f}x" if "speedup_vs_torch" in v else f"{'-':>9}"
            a = v.get("agreement", {})
            agree = (
                f"{100 * a['texts_same_entities']:.0f}% texts same"
                if "texts_same_entities" in a
                else f"max diff {a['vector_max_abs_diff']:.1e}"
                if a
                else "(reference)"
            )
            print(
                f"{c['set']:<11}{c['batch_size']:>6} {name:<9}{v['n']:>4}{v['p50_ms']:>9.2f}{v['p99_ms']:>9.2f}"
                f"{v['texts_per_s']:>9.1f}{g}{sp}  {agree}"
            )


def print_profile(cells: list[dict], target: float) -> float:
    """Stage shares of end-to-end Engine time; returns the worst decode share (decode + finish)."""
    print(f"\nshare of Engine end-to-end time (decode target <= {100 * target:.0f}%)")
    print(
        f"{'set':<11}{'batch':>6} {'variant':<9}{'p50 ms':>9}"
        + "".join(f"{s:>9}" for s in STAGES)
        + f"{'decode+fin':>11}"
    )
    worst = 0.0
    for c in cells:
        for name, v in c["variants"].items():
            sh = v["stage_share"]
            dec = sh["decode"] + sh["finish"]
            if c["task"] == "ner":
                worst = max(worst, dec)
            print(
                f"{c['set']:<11}{c['batch_size']:>6} {name:<9}{v['p50_ms']:>9.2f}"
                + "".join(f"{100 * sh[s]:>8.1f}%" for s in STAGES)
                + f"{100 * dec:>10.1f}%"
            )
    print(
        f"worst NER decode share: {100 * worst:.1f}% ({'within' if worst <= target else 'ABOVE'} the "
        f"{100 * target:.0f}% target)"
    )
    return worst


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to measure")
    src.add_argument(
        "--bundle", type=Path, help="a bundle holding fp32 and/or int8 graphs (default: the shipped one)"
    )
    src.add_argument("--bundle-fp32", type=Path, help="the fp32 bundle (instead of --bundle)")
    src.add_argument("--bundle-int8", type=Path, help="the int8 bundle (instead of --bundle)")
    src.add_argument(
        "--checkpoint-ner", type=Path, help="NER checkpoint the bundle came from (default: provenance)"
    )
    src.add_argument("--checkpoint-sim", type=Path, help="similarity checkpoint (default: provenance)")
    src.add_argument("--random", action="store_true", help="export a random-weight bundle and measure that")
    src.add_argument("--layers", type=int, default=4, help="--random: encoder layers")
    src.add_argument("--hidden", type=int, default=256, help="--random: hidden size")
    src.add_argument(
        "--like", type=Path, help="--random: copy this bundle's task settings (NER head, labels, windows; pooling)"
    )
    src.add_argument("--variants", default=",".join(ALL_VARIANTS), help=f"subset of {','.join(ALL_VARIANTS)}")
    run = p.add_argument_group("cells")
    run.add_argument("--sets", default="cluener,stsb,cmeee-long", help=f"text sets: {', '.join(TEXT_SETS)}")
    run.add_argument("--batch-sizes", default="1,8,32,128", help="texts per Engine call")
    run.add_argument("--long-chars", type=int, default=500, help="characters per cmeee-long document")
    run.add_argument("--threads", type=int, default=2, help="intra-op threads (ONNX Runtime and torch)")
    run.add_argument(
        "--batch-tokens", type=int, default=None, help="Engine token budget (default: the server's)"
    )
    run.add_argument(
        "--threshold",
        default=None,
        help="NER threshold: a number, 'auto' (~--entities-per-text pass; default with --random), "
        "or unset: the bundle's",
    )
    run.add_argument("--entities-per-text", type=float, default=3.0)
    run.add_argument("--warmup", type=int, default=2, help="untimed calls per variant and cell")
    run.add_argument("--repeats", type=int, default=200, help="at most this many rounds per cell")
    run.add_argument("--min-repeats", type=int, default=3, help="at least this many rounds per cell")
    run.add_argument(
        "--seconds", type=float, default=10.0, help="time budget per cell (all variants together)"
    )
    run.add_argument(
        "--peak-fp32", type=float, default=PEAK_GFLOPS["fp32"], help="this CPU's fp32 peak, GFLOP/s"
    )
    run.add_argument(
        "--peak-int8", type=float, default=PEAK_GFLOPS["int8"], help="this CPU's int8 peak, GOP/s"
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--profile", action="store_true", help="ONNX Runtime variants only; stage shares of Engine time"
    )
    out.add_argument(
        "--decode-target", type=float, default=0.05, help="--profile: largest decode share accepted"
    )
    out.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if args.profile and args.variants == ",".join(ALL_VARIANTS):
        args.variants = "ort-fp32,ort-int8"
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in args.variants if v not in ALL_VARIANTS]
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    bad += [s for s in args.sets if s not in TEXT_SETS]
    if bad:
        p.error(f"unknown variant(s) / set(s): {bad}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.peak = {"fp32": args.peak_fp32, "int8": args.peak_int8}
    if args.threshold is None and args.random:
        args.threshold = "auto"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from service.core import Limits
    from service.settings import Settings

    machine_before = machine_info()
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        bundles, ckpts = resolve_inputs(args, Path(tmp))
        batch_tokens = args.batch_tokens or Settings.model_fields["batch_tokens"].default
        limits = Limits(
            max_items=max(args.batch_sizes),
            max_chars=max(10_000, args.long_chars),
            threshold_min=-1e4,
            threshold_max=1e4,
            max_entities=10**9,
            batch_tokens=batch_tokens,
        )
        variants = load_variants(args, bundles, ckpts, limits)
        if not variants:
            raise SystemExit("no variant to run")
        for v in variants:
            v.instrument()
        configs = {task: checkpoint_config(c) for task, c in ckpts.items()}
        texts = {s: load_texts(s, long_chars=args.long_chars) for s in args.sets}
        threshold = None
        if args.threshold == "auto":
            ner_engine = next((v.engine for v in variants if "ner" in v.tasks), None)
            if ner_engine is not None:
                sample = [t for s in args.sets if SET_TASK[s] == "ner" for t in texts[s][0][:64]]
                threshold = (
                    calibrate_threshold(ner_engine, sample, args.entities_per_text) if sample else None
                )
                log.info(
                    "NER threshold %.4g (about %g entities per text)", threshold or 0, args.entities_per_text
                )
        elif args.threshold is not None:
            threshold = float(args.threshold)
        cells = []
        for set_name in args.sets:
            for bs in args.batch_sizes:
                log.info("cell %s x %d ...", set_name, bs)
                cell = run_cell(args, set_name, texts[set_name][0], bs, variants, configs, threshold)
                if cell:
                    cells.append(cell)
    result = {
        "bench": "engine",
        "mode": "profile" if args.profile else "variants",
        "bundles": {p: str(b) for p, b in bundles.items()}
        if not args.random
        else f"random {args.layers} layers x {args.hidden}" + (f", like {args.like}" if args.like else ""),
        "checkpoints": {t: str(c) for t, c in ckpts.items()} if not args.random else "random",
        "encoder": {t: c["encoder"] for t, c in configs.items()},
        "threads": args.threads,
        "batch_tokens": batch_tokens,
        "threshold": threshold,
        "texts": {
            s: {"count": len(t), "description": d, "mean_chars": float(np.mean([len(x) for x in t]))}
            for s, (t, d) in texts.items()
        },
        "timing": {
            "warmup": args.warmup,
            "min_rounds": args.min_repeats,
            "max_rounds": args.repeats,
            "seconds_per_cell": args.seconds,
            "order": "round-robin, rotated every round",
        },
        "peak_gflops": args.peak,
        "machine": machine_before,
        "load_average_after": machine_info()["load_average"],
        "cells": cells,
    }
    print(
        f"\nEngine, {args.threads} thread(s), batch_tokens {batch_tokens}, {result['bundles']}; "
        f"load average {machine_before['load_average']} -> {result['load_average_after']}"
    )
    if args.profile:
        result["worst_decode_share"] = print_profile(cells, args.decode_target)
        result["decode_target"] = args.decode_target
    else:
        print_table(cells)
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
