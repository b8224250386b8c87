"""Re-quantize a written bundle's dynamic int8 graphs as static int8, without the PyTorch checkpoint.

For bundles whose fp32 source is gone (the shipped ones: ``service/bundles``), so that they become batch
invariant now. Per task with an ``int8-dynamic`` graph (what a format 1 / 2 bundle's ``int8`` graph is)::

    dynamic int8 graph --dequantize--> fp32 graph --static int8 (export.convert.build_int8)--> int8 graph

* :func:`dequantize` rebuilds the fp32 graph exactly: each ``DynamicQuantizeLinear -> MatMulInteger ->
  Cast -> Mul(scale_x * scale_w)`` chain (and any ``DynamicQuantizeMatMul``) becomes one plain ``MatMul``
  whose weight is ``W = scale * (q - zero_point)``, per output channel as stored. Every other node is left
  as it was. This fp32 graph is exactly the model the dynamic graph approximated (the original fp32
  weights are lost; these differ from them by the int8 rounding of each weight).
* The static graph is calibrated like any export's (texts drawn reproducibly from the task's training
  data, each window its own unpadded batch), checked against the dequantized graph on the sample texts
  (recorded) and for batch dependence (above ``export.convert.BATCH_TOLERANCE`` the command fails).
  Re-quantizing the dequantized weights gives back the same int8 weights (symmetric per-channel scales
  of ``scale * q`` are ``scale``), so only the activations' treatment changes.
* The new bundle keeps everything else of the old one (tokenizer, settings, metrics, provenance, other
  graphs), writes format 3 with the quantization record, and its model card. ``fp32_out`` also writes
  a bundle with the dequantized fp32 graphs (the reference for evaluating the int8 graph).

CLI: ``ropenlp requantize BUNDLE --calibration-data ner=FILE -o OUT`` (``ropenlp.export``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.errors import ExportError, stage
from export.graph_tools import drop_unused
from export.onnx import publish
from export.variants import CalibrationTexts
from models.bundle import LEGACY_INT8, GraphSpec, Manifest, load_manifest, sha256, write_manifest
from models.card import write_model_card
from models.precisions import DEFAULT_CALIBRATION_METHOD, DEFAULT_CALIBRATION_SEED, DEFAULT_CALIBRATION_SIZE

log = logging.getLogger(__name__)

DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}


# --------------------------------------------------------------------------------------------
# Dynamic int8 graph -> fp32 graph
# --------------------------------------------------------------------------------------------


def dequantize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of a dynamically quantized graph with every integer MatMul back in fp32, and how many were
    rebuilt. Raises :class:`ExportError` on a pattern it does not know (nothing is guessed)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def array(name: str) -> np.ndarray:
        if name not in inits:
            raise ExportError(f"dequantize: {name!r} is not a constant of the graph")
        return numpy_helper.to_array(inits[name])

    def only_reader(name: str, op: str, at: str) -> onnx.NodeProto:
        found = readers.get(name, [])
        if len(found) != 1 or found[0].op_type != op:
            raise ExportError(f"dequantize: {at}: expected one {op} reading {name!r}, found "
                              f"{[n.op_type for n in found] or 'none'}")
        return found[0]

    def weight(q: str, scale: np.ndarray, zero: np.ndarray | None, at: str) -> np.ndarray:
        w = array(q)
        if w.ndim != 2:
            raise ExportError(f"dequantize: {at}: weight {q!r} has shape {w.shape}, expected (K, N)")
        z = np.zeros(1, np.float32) if zero is None else zero.astype(np.float32)
        if scale.size not in (1, w.shape[1]) or z.size not in (1, w.shape[1]):
            raise ExportError(f"dequantize: {at}: scale {scale.shape} / zero point {z.shape} fit neither the "
                              f"tensor nor the {w.shape[1]} output channels of {q!r}")
        # W = scale * (q - zero_point), per output channel (the last axis) as stored
        return (scale.astype(np.float32).reshape(1, -1) * (w.astype(np.float32) - z.reshape(1, -1))).astype(np.float32)

    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # name of the node replaced -> its replacement
    dead: set[str] = set()
    new_inits: list[onnx.TensorProto] = []
    rebuilt = 0
    for node in graph.node:
        if node.op_type == "MatMulInteger":
            at = node.name or node.output[0]
            quant = producer.get(node.input[0])
            if quant is None or quant.op_type != "DynamicQuantizeLinear":
                raise ExportError(f"dequantize: {at}: its activation does not come from DynamicQuantizeLinear")
            cast = only_reader(node.output[0], "Cast", at)
            mul = only_reader(cast.output[0], "Mul", at)
            scales = producer.get(next(i for i in mul.input if i != cast.output[0]))
            if scales is None or scales.op_type != "Mul" or quant.output[1] not in scales.input:
                raise ExportError(f"dequantize: {at}: the output is not scaled by scale_x * scale_w")
            w_scale = array(next(i for i in scales.input if i != quant.output[1]))
            zero = array(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            w = weight(node.input[1], w_scale, zero, at)
            name = node.name.removesuffix("_quant") or mul.output[0]
            w_name = f"{name}.dequantized_weight"
            new_inits.append(numpy_helper.from_array(w, w_name))
            new_nodes[node.name or node.output[0]] = [
                onnx.helper.make_node("MatMul", [quant.input[0], w_name], [mul.output[0]], name=name)]
            dead |= {id(cast), id(mul), id(scales)}
            rebuilt += 1
        elif node.op_type == "DynamicQuantizeMatMul":  # com.microsoft: (A, B, b_scale, b_zero_point, bias)
            at = node.name or node.output[0]
            zero = array(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            w = weight(node.input[1], array(node.input[2]), zero, at)
            name = node.name.removesuffix("_quant") or node.output[0]
            w_name = f"{name}.dequantized_weight"
            new_inits.append(numpy_helper.from_array(w, w_name))
            bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
            if bias is None:
                new_nodes[at] = [onnx.helper.make_node("MatMul", [node.input[0], w_name], [node.output[0]], name=name)]
            else:
                product = f"{name}_output_before_bias"
                new_nodes[at] = [onnx.helper.make_node("MatMul", [node.input[0], w_name], [product], name=name),
                                 onnx.helper.make_node("Add", [product, bias], [node.output[0]], name=f"{name}_bias")]
            rebuilt += 1
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in dead:
            continue
        kept.extend(new_nodes.get(node.name or node.output[0], [node]) if node.op_type in DYNAMIC_OPS else [node])
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_inits)
    drop_unused(out, initializers=True)
    left = sorted({n.op_type for n in graph.node} & DYNAMIC_OPS)
    if left:
        raise ExportError(f"dequantize: {', '.join(left)} left in the graph after rebuilding {rebuilt} MatMuls")
    del graph.value_info[:]  # the quantized tensors' types; ONNX Runtime re-derives the rest
    return out, rebuilt



def dequantize_file(src: str | Path, dst: str | Path) -> int:
    """:func:`dequantize` from file to file; returns how many MatMuls were rebuilt."""
    from export.convert import save

    model, rebuilt = dequantize(onnx.load(str(src)))
    save(model, dst)
    return rebuilt


# --------------------------------------------------------------------------------------------
# A bundle
# --------------------------------------------------------------------------------------------


def requantize_bundle(
    bundle: str | Path,
    out: str | Path,
    calibration: Mapping[str, CalibrationTexts],
    *,
    size: int = DEFAULT_CALIBRATION_SIZE,
    seed: int = DEFAULT_CALIBRATION_SEED,
    method: str = DEFAULT_CALIBRATION_METHOD,
    sample_texts: Sequence[str] | None = None,
    fp32_out: str | Path | None = None,
    overwrite: bool = False,
) -> Manifest:
    """Write ``out``: ``bundle`` with every ``int8-dynamic`` graph replaced by a static ``int8`` one calibrated
    on ``calibration[task]`` (``size`` texts drawn with ``seed``); ``fp32_out``: also a bundle with the
    dequantized fp32 graphs. ``out`` may be ``bundle`` itself (with ``overwrite``). Returns the new manifest."""
    from export import variants
    from export.convert import build_int8
    from export.onnx import _check_out, build_options
    from export.parity import SAMPLE_TEXTS
    from export.tasks import EXPORTERS
    from models.text import Tokenizer

    bundle, out = Path(bundle), Path(out)
    manifest = load_manifest(bundle)  # hashes verified: we re-quantize what the manifest describes
    todo = [task for task, spec in manifest.tasks.items() if LEGACY_INT8 in spec.graphs]
    if not todo:
        raise ExportError(f"{bundle}: no dynamic int8 graph to re-quantize (graphs: "
                          f"{ {t: list(s.graphs) for t, s in manifest.tasks.items()} })")
    missing = [t for t in todo if t not in calibration]
    if missing:
        raise ExportError(f"no calibration texts for {missing}: give each task's training data "
                          f"(--calibration-data {missing[0]}=FILE)")
    unknown = sorted(set(calibration) - set(todo))
    if unknown:
        raise ExportError(f"calibration data given for {unknown}, but {bundle} has dynamic int8 graphs only for {todo}")
    if out.resolve() != bundle.resolve():
        _check_out(out, overwrite=overwrite)
    elif not overwrite:
        raise ExportError(f"{out} is the bundle itself: pass overwrite=True / --overwrite to replace it")
    texts = list(sample_texts if sample_texts is not None else SAMPLE_TEXTS)
    tokenizer = Tokenizer.load(bundle / manifest.tokenizer, lowercase=manifest.lowercase)
    if manifest.normalize.enabled:  # the rows the service will run: calibrate on those
        from models.normalize import Normalizer

        tokenizer = tokenizer.normalizing(Normalizer(manifest.normalize))

    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    fp32_dir = Path(fp32_out) if fp32_out is not None else None
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    work = staging / ".work"
    work.mkdir()
    try:
        tasks, fp32_tasks = {}, {}
        for task, spec in manifest.tasks.items():
            if task not in todo:
                tasks[task] = spec
                continue
            exp = EXPORTERS[task]
            old = spec.graphs[LEGACY_INT8]
            fp32 = work / f"{exp.file_prefix}.fp32.onnx"
            with stage(f"dequantizing {old.file}"):
                rebuilt = dequantize_file(bundle / old.file, fp32)
            log.info("%s: %d integer MatMuls of %s rebuilt in fp32", task, rebuilt, old.file)
            note = (f"fp32 dequantized from the int8-dynamic graph {old.file} "
                    f"(sha256 {manifest.files.get(old.file, sha256(bundle / old.file))[:12]}, {rebuilt} MatMuls)")
            options = build_options(exp, spec, tokenizer, texts, calibration[task], size=size, seed=seed,
                                    method=method, source_note=note)
            dst = staging / f"{exp.file_prefix}.int8.onnx"
            with stage(f"static int8 of {fp32.name}"):
                built = build_int8(fp32, dst, options)
            parity = exp.graph_parity(spec, tokenizer, texts, fp32)
            report = variants.check({"int8": dst}, parity, tolerance=0.0, texts=len(texts),
                                    references={"fp32": parity.reference})
            report["int8"]["reference"] = "fp32 (dequantized)"
            graphs = {k: v for k, v in spec.graphs.items() if k != LEGACY_INT8}
            graphs["int8"] = variants.specs({"int8": built}, report, keep=["int8"])["int8"]
            tasks[task] = spec.model_copy(update={"graphs": _ordered(graphs)})
            fp32_tasks[task] = (fp32, spec, GraphSpec(
                file=f"{exp.file_prefix}.fp32.onnx", precision="fp32", opset=old.opset, inputs=old.inputs,
                outputs=old.outputs, parity={"reference": f"{old.file} dequantized", "matmuls_rebuilt": rebuilt}))
            log.info("%s int8 (static): %s; batch dependence %.3g", task,
                     ", ".join(f"{k}={v}" for k, v in report["int8"].items()), built.quantization.batch_dependence)
        when = datetime.now(timezone.utc).date().isoformat()
        notes = "; ".join(filter(None, [manifest.provenance.notes, (
            f"{when}: int8 graphs of {', '.join(todo)} re-quantized as static int8 from the dynamic ones "
            "(ropenlp requantize: exact dequantization, then calibration on training texts)")]))
        new = manifest.model_copy(update={"tasks": tasks, "files": {},
                                          "provenance": manifest.provenance.model_copy(update={"notes": notes})})
        for name in {manifest.tokenizer} | {g.file for t in tasks.values() for g in t.graphs.values()}:
            if not (staging / name).exists():
                shutil.copyfile(bundle / name, staging / name)
        if fp32_dir is not None:
            _write_fp32(fp32_dir, bundle, manifest, fp32_tasks, overwrite=overwrite)
        shutil.rmtree(work)
        new = publish(staging, out, new)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return new


def _ordered(graphs: dict[str, GraphSpec]) -> dict[str, GraphSpec]:
    from models.precisions import NAMES

    return {p: graphs[p] for p in NAMES if p in graphs}


def _write_fp32(out: Path, bundle: Path, manifest: Manifest, tasks: dict, *, overwrite: bool) -> None:
    """A bundle of the dequantized fp32 graphs (the requantized tasks only): the reference to evaluate against."""
    from export.onnx import _check_out

    _check_out(out, overwrite=overwrite)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    specs = {}
    for task, (fp32, spec, graph) in tasks.items():
        shutil.copyfile(fp32, out / graph.file)
        specs[task] = spec.model_copy(update={"graphs": {"fp32": graph}})
    shutil.copyfile(bundle / manifest.tokenizer, out / manifest.tokenizer)
    m = manifest.model_copy(update={"name": f"{manifest.name}-dequantized-fp32", "tasks": specs, "files": {}})
    write_model_card(out, write_manifest(out, m))
