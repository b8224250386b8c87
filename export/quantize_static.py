"""Static (calibrated) int8 for CPU: activation scales fixed at export, so a text's result does not
depend on the batch it rides in (torch-free: onnx, onnxruntime, numpy).

Read top to bottom: calibration inputs (texts -> one unpadded batch per text window) -> reader ->
tensor types from ONNX Runtime -> ``quantize_static_int8`` -> QDQ clean-up -> what got quantized
(report, head check) -> batch dependence (for tests and parity records).

Why static: ``quantize_dynamic`` (export.convert.quantize_int8) inserts ``DynamicQuantizeLinear``,
which picks one activation scale per tensor per call over every row and the padding of the batch,
so a text's scores change with its neighbours. Here every scale is a constant of the graph, every
integer product is exact, and the fp32 ops in between (LayerNorm, softmax, GELU, RoPE) work per
row: the same text gives the same numbers alone and in any padded batch (measured 0.0 on NER
scores, 4e-8 on similarity vectors; dynamic int8 1.2e-2 / 3e-4: ``bench/static_int8.py``).

How (each choice measured with ``bench/static_int8.py`` on a 4 x 256 random model):

* **Types from ONNX Runtime, not from shape inference alone.** The offline optimiser's fused ops
  (``SkipLayerNormalization``, ``BiasGelu``: domain com.microsoft) are unknown to
  ``onnx.shape_inference``, so the tensors after them, and every MatMul fed by them, had no type
  (34 of the NER graph's tensors); the quantizer skips untyped tensors, so those MatMuls stayed
  fp32. ORT's ``quant_pre_process`` (symbolic shape inference) stops with "Incomplete symbolic shape
  inference" on this graph. ONNX Runtime resolves every type when it loads a graph:
  :func:`with_runtime_types` makes the untyped tensors graph outputs, opens an unoptimised session
  and writes the element types it reports into ``value_info``. The raw ``torch.onnx.export`` graph
  (standard ops only) needs none of this, and is the better input: static int8 of the raw graph ran
  1.2-1.3x faster than of the optimised one (ONNX Runtime's own load-time fusions leave
  LayerNormalization + Add, while the offline optimiser's ``SkipLayerNormalization`` kernel took 4x
  as long as Add + LayerNormalization on (32, 64, 256)), with the same accuracy.
* **QDQ, MatMuls with a constant weight only**: when the session loads the graph, ONNX Runtime fuses
  DQ(activation) + DQ(int8 weight) -> MatMul into ``MatMulIntegerToFloat`` (u8 x s8, float output).
  The attention products q.k and p.v (two activations) stay fp32: quantizing them measured slower
  and less accurate. (``MatMulConstBOnly`` is honoured only by the QOperator quantizer, so in QDQ
  they are excluded by name.) QOperator (QLinearMatMul) measured slower than QDQ.
  uint8 activations (asymmetric), int8 weights per output channel (VNNI's u8 x s8).
* **Only the quantized MatMuls read int8 values** (:func:`keep_fp32_consumers`): the QDQ quantizer
  points every reader of a quantized tensor at its dequantized copy, the residual connection
  included, which made the error 5x that of the QOperator graph.
* **The task head stays fp32**, found exactly as the dynamic path finds it
  (``export.graph_tools.head_nodes``); the quantized graph is checked afterwards and a head node that
  is gone or reads a dequantized tensor raises :class:`StaticQuantError`.
* **Calibration**: each text window is its own batch of one, with no padding. Static scales are
  the same whatever batch a text later rides in, so calibration batching decides only which values
  the ranges see: unpadded rows show exactly the real-token activations the service keeps, padded
  rows would also show the activations of padding positions, which the service throws away
  (on random weights the two measured within 3% of each other). The histogram calibrators (entropy,
  percentile) cannot stack unpadded batches of different lengths, so they get one batch at a time.
  Percentile (99.99) is the default (``models.precisions.DEFAULT_CALIBRATION_METHOD``), chosen on the
  trained models' dev metrics: CLUENER F1 76.74 against MinMax 76.57 (fp32 76.78), CMeEE 66.00 vs
  66.06, mean Spearman of five sets 46.62 for both (docs/models.md). On random weights MinMax had
  given the smallest largest error (NER 0.0103 vs entropy 0.013, percentile 0.018), which is why it
  was the default before: a trained model's outlier activations are what the percentile clips.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from export.graph_tools import drop_unused
from models.precisions import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_SIZE,
    CalibrationMethod,
)

log = logging.getLogger(__name__)

Format = Literal["qdq", "qoperator"]
DEFAULT_PERCENTILE = 99.99
INPUT_NAMES = ("input_ids", "attention_mask")

Feeds = dict[str, np.ndarray]


class StaticQuantError(RuntimeError):
    """Static quantization that cannot give a correct graph: the message says which node or input and why."""


# --------------------------------------------------------------------------------------------
# Calibration inputs
# --------------------------------------------------------------------------------------------


def draw_texts(texts: Iterable[str], n: int = DEFAULT_CALIBRATION_SIZE, *,
               seed: int = DEFAULT_CALIBRATION_SEED) -> list[str]:
    """``n`` distinct non-blank texts drawn reproducibly (``random.Random(seed)``) from ``texts``, in the
    order drawn; all of them (shuffled) when there are fewer."""
    pool = list(dict.fromkeys(t for t in texts if isinstance(t, str) and t.strip()))
    if not pool:
        raise ValueError("no calibration texts: the text list is empty or blank")
    rng = random.Random(seed)
    return rng.sample(pool, min(n, len(pool)))


def row_feeds(rows: Iterable[np.ndarray]) -> list[Feeds]:
    """Graph inputs with each row (token ids) its own batch of 1, without padding."""
    return [{"input_ids": np.asarray(r, dtype=np.int64)[None, :], "attention_mask": np.ones((1, len(r)), np.int64)}
            for r in rows]


def _reader_class():
    from onnxruntime.quantization import CalibrationDataReader

    class FeedsReader(CalibrationDataReader):
        """A list of feeds as ONNX Runtime's reader, with the ``set_range`` the chunked
        (``CalibStridedMinMax``) collection uses."""

        def __init__(self, feeds: Sequence[Feeds]):
            self.feeds = list(feeds)
            self.set_range(0, len(self.feeds))

        def get_next(self):
            if self.pos >= self.end:
                return None
            self.pos += 1
            return self.feeds[self.pos - 1]

        def __len__(self):
            return len(self.feeds)

        def set_range(self, start_index: int, end_index: int):
            self.pos, self.end = start_index, min(end_index, len(self.feeds))

    return FeedsReader


def _as_feeds(calibration, input_names: Sequence[str]) -> list[Feeds]:
    """The calibration as a list of feeds (a reader is drained), checked against the graph's inputs."""
    if isinstance(calibration, Mapping):
        raise StaticQuantError("calibration: expected a list of feeds or a CalibrationDataReader, got one dict")
    if hasattr(calibration, "get_next"):
        feeds = list(iter(calibration.get_next, None))
    else:
        feeds = list(calibration)
    if not feeds:
        raise StaticQuantError("calibration: no inputs (give a few hundred texts' feeds)")
    for k, f in enumerate(feeds):
        missing = [n for n in input_names if n not in f]
        if missing:
            raise StaticQuantError(f"calibration item {k}: missing graph input(s) {missing}")
    return [{n: np.ascontiguousarray(f[n]) for n in input_names} for f in feeds]


# --------------------------------------------------------------------------------------------
# Tensor types from ONNX Runtime
# --------------------------------------------------------------------------------------------

_ORT_TYPES = {
    "tensor(float)": onnx.TensorProto.FLOAT, "tensor(float16)": onnx.TensorProto.FLOAT16,
    "tensor(double)": onnx.TensorProto.DOUBLE, "tensor(int64)": onnx.TensorProto.INT64,
    "tensor(int32)": onnx.TensorProto.INT32, "tensor(bool)": onnx.TensorProto.BOOL,
    "tensor(int8)": onnx.TensorProto.INT8, "tensor(uint8)": onnx.TensorProto.UINT8,
}


def with_runtime_types(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with a type for every intermediate tensor: ``onnx.shape_inference``'s where it
    found one, else the element type ONNX Runtime resolves when it loads the graph (contrib ops such as
    ``SkipLayerNormalization`` included; the shape is left unknown); and how many tensors needed ONNX Runtime."""
    import onnxruntime as ort

    out = onnx.shape_inference.infer_shapes(model)
    known = {vi.name for vi in (*out.graph.value_info, *out.graph.input, *out.graph.output)
             if vi.type.tensor_type.elem_type}
    inits = {t.name for t in model.graph.initializer}
    missing = list(dict.fromkeys(o for n in model.graph.node for o in n.output if o and o not in inits | known))
    if not missing:
        return out, 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in missing)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    resolved = {arg.name: arg.type for arg in session.get_outputs()}
    stale = {vi.name for vi in out.graph.value_info if vi.name in missing}  # entries without an element type
    kept = [vi for vi in out.graph.value_info if vi.name not in stale]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept)
    for name in missing:
        elem = _ORT_TYPES.get(resolved.get(name, ""))
        if elem is None:
            raise StaticQuantError(f"tensor {name!r}: ONNX Runtime reports type {resolved.get(name)}, "
                                   "not a plain tensor")
        out.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, None))
    return out, len(missing)


# --------------------------------------------------------------------------------------------
# Quantization
# --------------------------------------------------------------------------------------------


@dataclass
class StaticInt8Report:
    """What ``quantize_static_int8`` did; :meth:`manifest_entry` is what a bundle should record."""

    method: str
    format: str
    per_channel: bool
    activation_type: str
    weight_type: str
    percentile: float | None
    calibration_batches: int
    calibration_tokens: int
    untyped_before: int  # tensors onnx.shape_inference left without a type (typed here from ONNX Runtime)
    matmuls: int  # MatMul + Gemm nodes of the fp32 graph
    matmuls_quantized: int
    matmuls_const_weight: int  # outside the head, with a constant operand
    matmuls_const_weight_quantized: int
    fp32_matmuls: list[str] = field(default_factory=list)  # left in fp32 (head, attention products, ...)
    head_nodes: int = 0
    seconds: float = 0.0

    def manifest_entry(self, *, data: str, texts: int, seed: int) -> dict[str, str | int | float]:
        """What a bundle should record for this graph, flat (str / int / float values, as ``GraphSpec.parity``
        holds): how it was quantized and calibrated. ``data``: the calibration texts' source (e.g.
        ``"cluener train"``), ``texts`` / ``seed``: as given to :func:`draw_texts`."""
        entry: dict[str, str | int | float] = {
            "quantization": "static", "method": self.method, "format": self.format,
            "activations": f"{self.activation_type} per-tensor",
            "weights": f"{self.weight_type} {'per-channel' if self.per_channel else 'per-tensor'}",
            "calibration_data": data, "calibration_texts": texts, "calibration_seed": seed,
            "calibration_batches": self.calibration_batches, "calibration_tokens": self.calibration_tokens,
            "calibration_batching": "one unpadded window per batch",
            "matmuls_int8": self.matmuls_quantized, "matmuls_fp32": len(self.fp32_matmuls),
        }
        if self.percentile is not None:
            entry["percentile"] = self.percentile
        return entry

    def as_dict(self) -> dict:
        return asdict(self)


def quantize_static_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration,
    *,
    method: CalibrationMethod = DEFAULT_CALIBRATION_METHOD,
    per_channel: bool = True,
    percentile: float = DEFAULT_PERCENTILE,
    exclude: Sequence[str] = (),
    quantize_attention: bool = False,
    quant_format: Format = "qdq",
    activation_type: Literal["uint8", "int8"] = "uint8",
) -> StaticInt8Report:
    """Static int8 of an fp32 graph -> ``out_path``; returns what was done.

    ``fp32_path``: the exporter's graph, either ``torch.onnx.export``'s raw graph (measured fastest:
    ONNX Runtime then fuses LayerNorm / GELU itself when the session loads) or the offline-optimised
    ``*.fp32.onnx`` (its contrib ops are typed here from ONNX Runtime).
    ``calibration``: a list of feeds (``{"input_ids": (1, T) int64, "attention_mask": (1, T) int64}``,
    see :func:`export.onnx.calibration_feeds`) or an ``onnxruntime.quantization.CalibrationDataReader``.
    ``method``: activation ranges by ``minmax``, ``entropy`` or ``percentile`` (``percentile``, e.g. 99.99).
    ``exclude``: more node names to keep fp32; the task head (``export.graph_tools.head_nodes``) always is.
    ``quantize_attention``: also quantize the activation x activation MatMuls (q.k, p.v).
    Raises :class:`StaticQuantError` when a head node gets quantized, or a MatMul that should be
    quantized (every one with a constant weight outside the head) stays fp32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from export.graph_tools import head_nodes, save
    from export.graph_tools import quiet as _quiet

    if method not in CALIBRATION_METHODS:
        raise StaticQuantError(f"unknown calibration method {method!r}: choose from {', '.join(CALIBRATION_METHODS)}")
    if quant_format not in ("qdq", "qoperator"):
        raise StaticQuantError(f"unknown format {quant_format!r}: choose qdq or qoperator")
    t0 = time.perf_counter()
    model = onnx.load(str(fp32_path))
    head = head_nodes(model)  # names unnamed nodes, so they can be excluded (and checked) by name
    excluded = list(dict.fromkeys([*head, *exclude]))
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    feeds = _as_feeds(calibration, inputs)
    typed, untyped = with_runtime_types(model)
    before = _matmuls(typed)
    attention = [m.name for m in before.values() if not m.const_weight and m.name not in excluded]
    # MatMulConstBOnly is honoured by the QOperator quantizer only: in QDQ the products of two
    # activations are kept fp32 by name.
    skipped = excluded + ([] if quantize_attention else attention)

    extra = {"MatMulConstBOnly": not quantize_attention, "WeightSymmetric": True,
             "ActivationSymmetric": activation_type == "int8"}
    # Float MatMul outputs: ORT fuses DQ + DQ -> MatMul into MatMulIntegerToFloat (quantized outputs give
    # QLinearMatMul + DequantizeLinear before the bias Add: measured slower, no more accurate).
    extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    if method != "minmax":
        # The histogram calibrators stack each tensor over the batches they are given (np.asarray), which
        # fails for unpadded batches of different lengths: hand them one batch at a time (histograms merge).
        extra["CalibStridedMinMax"] = 1
    reader = _reader_class()(feeds)
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    act = QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory(prefix="ropenlp-int8-") as tmp:
        src = Path(tmp) / "typed.onnx"
        onnx.save_model(typed, str(src))
        with _quiet():
            quantize_static(
                str(src), str(out_path), reader,
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=["MatMul", "Gemm"], per_channel=per_channel, reduce_range=False,
                activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=skipped,
                calibrate_method=calibrate_method, extra_options=extra,
            )
    quantized = onnx.load(str(out_path))
    del quantized.graph.value_info[:]  # the runtime's types were for the quantizer; the session re-derives them
    done = quantized_matmuls(quantized, before)
    if quant_format == "qdq":
        keep_fp32_consumers(quantized, done)
    _check(quantized, before, done, excluded, quantize_attention)
    save(quantized, out_path)
    report = StaticInt8Report(
        method=method, format=quant_format, per_channel=per_channel, activation_type=activation_type,
        weight_type="int8", percentile=percentile if method == "percentile" else None,
        calibration_batches=len(feeds), calibration_tokens=int(sum(f[inputs[0]].size for f in feeds)),
        untyped_before=untyped, matmuls=len(before), matmuls_quantized=len(done),
        matmuls_const_weight=sum(1 for m in before.values() if m.const_weight and m.name not in excluded),
        matmuls_const_weight_quantized=sum(1 for m in before.values()
                                           if m.const_weight and m.name in done),
        fp32_matmuls=sorted(set(before) - done), head_nodes=len(head), seconds=time.perf_counter() - t0,
    )
    log.info("static int8 (%s, %s) of %s: %d of %d MatMul/Gemm quantized, %d calibration batches, %.1f s",
             method, quant_format, Path(fp32_path).name, report.matmuls_quantized, report.matmuls,
             report.calibration_batches, report.seconds)
    return report


# --------------------------------------------------------------------------------------------
# QDQ clean-up: only the quantized MatMuls read the dequantized activations
# --------------------------------------------------------------------------------------------


def keep_fp32_consumers(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Give every consumer of a dequantized activation other than a quantized MatMul / Gemm the fp32
    tensor back; returns how many inputs were rewired.

    ONNX Runtime's QDQ quantizer puts ``x -> QuantizeLinear -> DequantizeLinear`` on a tensor and
    points *every* consumer of ``x`` at the dequantized copy: the residual connection (the
    ``SkipLayerNormalization`` beside the q/k/v or FFN MatMuls), ``Shape`` nodes and, where a head reads
    an inner layer (first-last-avg pooling), the task head. The residual stream then carries int8
    rounding from layer to layer (measured: 5x the error of the QOperator graph, whose quantized ops
    are the only readers of the int8 values), and a ``DequantizeLinear`` that still has a float
    consumer is not folded into ``MatMulIntegerToFloat``. (``DedicatedQDQPair`` does not help: it
    rewires only tensors with several quantized readers.)
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    rewired = 0
    for node in model.graph.node:
        if node.name in quantized:
            continue
        for k, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                continue  # a weight's DequantizeLinear: its consumer is quantized by definition
            node.input[k] = q.input[0]
            rewired += 1
    drop_unused(model)
    return rewired



# --------------------------------------------------------------------------------------------
# What got quantized
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MatMul:
    name: str
    op_type: str
    const_weight: bool  # one operand is an initializer (a weight), not an activation


def _matmuls(model: onnx.ModelProto) -> dict[str, _MatMul]:
    inits = {t.name for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return {n.name: _MatMul(n.name, n.op_type, any(i in inits or i in consts for i in n.input[:2]))
            for n in model.graph.node if n.op_type in ("MatMul", "Gemm")}


def quantized_matmuls(model: onnx.ModelProto, originals: Mapping[str, _MatMul] | None = None) -> set[str]:
    """Names of the MatMul / Gemm nodes that compute in int8: in QDQ a node (same name) whose data
    inputs come from DequantizeLinear; in QOperator the ``QLinearMatMul`` / ``MatMulInteger`` /
    ``QGemm`` named ``<original>_quant``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    done = set()
    for n in model.graph.node:
        if n.op_type in ("MatMul", "Gemm"):
            data = [producer.get(i) for i in n.input[:2]]
            if any(p is not None and p.op_type == "DequantizeLinear" for p in data):
                done.add(n.name)
        elif n.op_type in ("QLinearMatMul", "MatMulInteger", "QGemm", "MatMulIntegerToFloat",
                           "DynamicQuantizeMatMul"):
            done.add(n.name.removesuffix("_quant"))
    return done if originals is None else done & set(originals)


def head_inputs_quantized(model: onnx.ModelProto, head: Iterable[str]) -> list[str]:
    """Head nodes that are gone (replaced by a quantized op) or read a DequantizeLinear output."""
    by_name = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for name in head:
        node = by_name.get(name)
        if node is None:
            bad.append(f"{name} (replaced)")
        elif any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear" for i in node.input):
            bad.append(name)
    return bad


def _check(quantized: onnx.ModelProto, before: Mapping[str, _MatMul], done: set[str], excluded: Sequence[str],
           quantize_attention: bool) -> None:
    leaked = sorted(set(excluded) & done) or head_inputs_quantized(quantized, excluded)
    if leaked:  # a renaming in a future quantizer must not silently quantize the head
        raise StaticQuantError(f"static int8 reached the task head ({', '.join(leaked)}): its nodes must stay fp32")
    missed = sorted(m.name for m in before.values()
                    if m.name not in excluded and m.name not in done and (m.const_weight or quantize_attention))
    if missed:
        raise StaticQuantError(f"{len(missed)} encoder MatMul(s) stayed fp32 ({', '.join(missed[:4])}"
                               f"{', ...' if len(missed) > 4 else ''}): a tensor type or a range is missing")


# --------------------------------------------------------------------------------------------
# Batch dependence (for tests, benches and the export's parity record)
# --------------------------------------------------------------------------------------------


def max_batch_dependence(session, rows: Sequence[np.ndarray], *, pad_id: int, batch_size: int = 8,
                         seed: int = 0) -> float:
    """Largest |output of a row alone - output of the same row in a padded batch| over the real
    positions, for ``rows`` (token id arrays of different lengths) run alone and then in shuffled
    batches of ``batch_size``. ``session``: an ``onnxruntime.InferenceSession`` (or a graph path) of a NER
    graph (scores (B, C, T, T): spans i <= j on real tokens compared) or a similarity graph ((B, k))."""
    from models.text import pad_batch

    if not hasattr(session, "run"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        session = ort.InferenceSession(str(session), so, providers=["CPUExecutionProvider"])

    def run(seqs):
        ids, mask = pad_batch(list(seqs), pad_id=pad_id)
        return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

    def real(out: np.ndarray, n: int) -> np.ndarray:
        if out.ndim == 1:  # (k,) sentence vector
            return out
        spans = out[:, :n, :n]  # (C, n, n)
        return spans[:, np.triu(np.ones((n, n), dtype=bool))]

    alone = [real(run([r])[0], len(r)) for r in rows]
    order = np.random.default_rng(seed).permutation(len(rows))
    worst = 0.0
    for start in range(0, len(rows), batch_size):
        idx = order[start : start + batch_size]
        out = run([rows[i] for i in idx])
        for b, i in enumerate(idx):
            diff = np.abs(real(out[b], len(rows[i])).astype(np.float64) - alone[i])
            worst = max(worst, float(diff.max()))
    return worst
