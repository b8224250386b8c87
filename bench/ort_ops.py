"""Where one model call's time goes inside ONNX Runtime, by operator type. Not a test.

    python bench/ort_ops.py [--bundle service/bundles/default] [--task ner] [--batch 32] [--threads 1] [--json out.json]

Opens the bundle's graph for ``--task`` (its CPU precision unless ``--precision``) with the server's
session options and ONNX Runtime's session profiling on, runs ``--warmup`` + ``--runs`` calls on one
padded batch of ``--batch`` real texts (CLUENER dev sentences for NER, STS-B dev sentences for
similarity), and prints each operator type's share of the kernel time, with the median call. The
figures name what stands between the graph and the CPU's int8 kernels (docs/performance.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `bench` importable when run as a script

from bench.common import load_pairs, load_texts, machine_info, write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, help="bundle directory (default: the shipped one)")
    p.add_argument("--task", default="ner", help="the bundle's task whose graph is profiled")
    p.add_argument("--precision", default=None, help="graph variant (default: the CPU's preferred one)")
    p.add_argument("--batch", type=int, default=32, help="texts in the one padded batch")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--top", type=int, default=14, help="operator types printed")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort

    from models.text import pad_batch
    from service.core import Engine
    from service.settings import DEFAULT_BUNDLE, Settings

    bundle = args.bundle or DEFAULT_BUNDLE
    settings = Settings.from_env({}, bundle=bundle, provider="cpu", precision=args.precision,
                                 intra_op_threads=args.threads)
    engine = Engine.from_settings(settings)
    graph = engine.runtime.describe()[args.task]
    texts = load_texts("cluener")[0] if args.task == "ner" else [a for a, _ in load_pairs()]
    seqs = [engine.tokenizer.encode(t).ids for t in texts[: args.batch]]
    ids, mask = pad_batch(seqs, pad_id=engine.tokenizer.pad_id)

    with tempfile.TemporaryDirectory(prefix="ort-ops-") as tmp:
        so = engine.runtime.session_options()  # the server's, profiling added
        so.enable_profiling, so.profile_file_prefix = True, os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(Path(bundle) / graph["file"]), so, providers=["CPUExecutionProvider"])
        feeds = {i.name: (ids if "ids" in i.name else mask) for i in session.get_inputs()}
        for _ in range(args.warmup + args.runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    calls = [e["dur"] for e in events if e.get("name") == "model_run"][args.warmup:]
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    shares = {op: us / total for op, us in by_op.most_common()}
    result = {
        "bench": "ort_ops", "bundle": str(bundle), "task": args.task, "graph": graph["file"],
        "precision": graph["precision"], "batch": [int(ids.shape[0]), int(ids.shape[1])],
        "threads": args.threads, "runs": args.runs, "median_call_ms": float(np.median(calls)) / 1e3,
        "op_share": shares, "machine": machine_info(),
    }
    print(f"{graph['file']} ({graph['precision']}), batch {ids.shape[0]} x {ids.shape[1]} tokens, "
          f"{args.threads} thread(s): median call {result['median_call_ms']:.2f} ms")
    for op, share in list(shares.items())[: args.top]:
        print(f"  {op:28s} {100 * share:5.1f} %")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
