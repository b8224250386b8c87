"""The ONNX side of the export (torch-free): offline optimisation, dynamic int8, fp16, graph facts.

Read top to bottom (graph facts -- IO names, opset, IR cap, the task head -- are in ``export.graph_tools``):
optimize (fp32) -> quantize_int8 (CPU)
-> convert_fp16 (GPU) -> the builders the precision registry names (``models.precisions``:
``build_int8`` (static, ``export.quantize_static``), ``build_int8_dynamic``, ``build_fp16``; each
``(src, dst, options) -> dst`` or a :class:`Built` that also says how the graph was quantized).

* ``optimize``: ONNX Runtime's transformer optimiser with ``model_type='bert'`` and ``opt_level=1``
  (basic, provider-independent rewrites; the result serves CPU and CUDA). For RoFormer it fuses
  LayerNorm (+ residual: SkipLayerNormalization) and BiasGelu; attention stays unfused because the
  rotation breaks the pattern.
* ``quantize_int8``: (the ``int8-dynamic`` variant) ``quantize_dynamic`` with QInt8 weights on the optimised graph. Only MatMuls
  with a constant weight are quantized (``MatMulConstBOnly``), so attention and span products
  between activations stay fp32; the embedding Gather and the task head (span projections; pooling,
  whitening, normalisation) are left in fp32 as well. ``DefaultTensorType``
  is needed on the optimiser's output, whose fused ops have no type information for the quantizer.
* ``convert_fp16``: the encoder in fp16, the task head (everything after the last LayerNorm) in
  fp32, graph inputs and outputs as they were (``keep_io_types``): outputs stay float32 and the span
  mask stays ``finfo(fp32).min``. Inside the encoder the converter clips constants to +-65504, so
  the attention mask's ``-inf`` becomes -65504: finite, and a masked key still gets weight 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export.graph_tools import LAYER_NORMS, MAX_IR_VERSION, graph_io, head_nodes, opset_of, save  # noqa: F401
from export.graph_tools import quiet as _quiet
from models.bundle import Calibration, Quantization

log = logging.getLogger(__name__)
BATCH_TOLERANCE = 1e-4  # a batch-invariant variant: |a text's outputs alone - in a padded batch| at most this


# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


def optimize(src: str | Path, dst: str | Path, *, num_heads: int = 0, hidden_size: int = 0) -> Path:
    """fp32 graph -> ORT transformer optimiser (bert, level 1) -> ``dst``."""
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet():
        opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=1, use_gpu=False)
        fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    log.info("optimised %s: %d nodes, fused %s", Path(dst).name, len(opt.model.graph.node), fused or "nothing")
    return save(opt.model, dst)


def quantize_int8(src: str | Path, dst: str | Path, *, per_channel: bool = True) -> Path:
    """Dynamic int8 (QInt8 weights, activations quantized at run time) of an fp32 graph -> ``dst``.

    The task head (see :func:`head_nodes`) stays fp32: whitening divides by the square roots of small
    eigenvalues, so int8 rounding of its input or kernel would be amplified exactly where the
    directions carry least variance, and the span projections set the scores compared to the threshold.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    head = head_nodes(model)  # names unnamed nodes, so the quantizer can exclude them by name
    # quantize_dynamic first rewrites every Gemm (the optimiser fuses whitening's MatMul + Add into one)
    # as MatMul "<name>_MatMul" + Add "<name>_Add", and excludes by the new names.
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
    excluded = head + [f"{name}_MatMul" for name in head if name in gemms]
    with _quiet():
        quantize_dynamic(
            model, str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
            op_types_to_quantize=["MatMul"], nodes_to_exclude=excluded,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    quantized = onnx.load(str(dst))
    leaked = sorted(quantized_nodes(quantized) & set(excluded))
    if leaked:  # a renaming in a future quantizer must not silently quantize the head again
        raise RuntimeError(f"int8 quantization reached the task head ({', '.join(leaked)}): its nodes must stay fp32")
    return save(quantized, dst)


def dynamic_matmuls(model: onnx.ModelProto) -> tuple[int, int]:
    """(integer, float) MatMul / Gemm nodes of a dynamically quantized graph."""
    ops = [n.op_type for n in model.graph.node]
    integer = ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul")
    return integer, ops.count("MatMul") + ops.count("Gemm")


def quantized_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the original nodes that the dynamic quantizer turned into integer MatMuls
    (it names its ``MatMulInteger`` / ``DynamicQuantizeMatMul`` node ``<original>_quant``)."""
    return {n.name.removesuffix("_quant") for n in model.graph.node
            if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")}


def convert_fp16(src: str | Path, dst: str | Path) -> Path:
    """fp16 encoder, fp32 task head and float32 graph inputs/outputs -> ``dst``.

    The head -- every node between the encoder's last LayerNorm and the graph outputs: GlobalPointer
    projections, span products and span mask; pooling, whitening and L2 normalisation -- stays in
    fp32 (it is a small share of the work): span scores keep fp32 resolution around the threshold,
    the mask stays ``finfo(fp32).min``, and sums of squares or of many tokens cannot overflow fp16.
    """
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    head = head_nodes(model)
    log.info("fp16 %s: %d of %d nodes kept in fp32 (task head)", Path(dst).name, len(head), len(model.graph.node))
    wrapped = OnnxModel(model)
    with _quiet():
        wrapped.convert_float_to_float16(keep_io_types=True, use_symbolic_shape_infer=True, node_block_list=head)
    return save(wrapped.model, dst)


# --------------------------------------------------------------------------------------------
# Builders: what models.precisions.PRECISIONS[name].builder names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """What a builder made: the graph file, and for a quantized graph how it was quantized (the manifest's record)."""

    file: Path
    quantization: Quantization | None = None


def build_int8(src: Path, dst: Path, options) -> Built:
    """The static int8 variant of the raw export (``options``: ``export.variants.BuildOptions``, whose
    ``calibration`` holds the feeds of texts drawn from the task's training data, described by
    ``calibration_record``). Fails when the graph's outputs depend on the batch (above ``BATCH_TOLERANCE``)."""
    from export.errors import ExportError
    from export.quantize_static import quantize_static_int8

    if not options.calibration or options.calibration_record is None:
        raise ExportError(f"{dst.name}: static int8 needs calibration texts (a few hundred from the task's "
                          "training data); none were given")
    report = quantize_static_int8(src, dst, options.calibration, method=options.method,
                                  per_channel=options.per_channel)
    dependence = batch_dependence(dst, options.check_rows, pad_id=options.pad_id)
    if not dependence <= BATCH_TOLERANCE:  # also NaN
        raise ExportError(f"{dst.name}: a text's outputs differ by up to {dependence:.3g} between the text alone "
                          f"and the text in a padded batch (tolerance {BATCH_TOLERANCE:g}): static int8 must not "
                          "depend on the batch")
    record = options.calibration_record
    calibration = Calibration(source=record.source, texts=record.texts, seed=record.seed,
                              rows=report.calibration_batches, tokens=report.calibration_tokens, method=report.method,
                              percentile=report.percentile)
    return Built(dst, Quantization(
        mode="static", batch_invariant=True, batch_dependence=dependence, format=report.format,
        activations=f"{report.activation_type} per-tensor, calibrated",
        weights=f"{report.weight_type} {'per-channel' if report.per_channel else 'per-tensor'}",
        matmuls_int8=report.matmuls_quantized, matmuls_fp32=len(report.fp32_matmuls), calibration=calibration,
        source=options.source_note or f"the raw torch.onnx export ({src.name})",
    ))


def build_int8_dynamic(src: Path, dst: Path, options) -> Built:
    """The dynamic int8 variant: activation scales per call, so its outputs depend on the batch (recorded)."""
    quantize_int8(src, dst, per_channel=options.per_channel)
    integer, floating = dynamic_matmuls(onnx.load(str(dst), load_external_data=False))
    return Built(dst, Quantization(
        mode="dynamic", batch_invariant=False,
        batch_dependence=batch_dependence(dst, options.check_rows, pad_id=options.pad_id), format="qoperator",
        activations="uint8 per-tensor, scale per call over the whole batch (padding included)",
        weights=f"int8 {'per-channel' if options.per_channel else 'per-tensor'}",
        matmuls_int8=integer, matmuls_fp32=floating, source=f"the optimised fp32 graph ({src.name})",
    ))


def batch_dependence(graph: Path, rows: Sequence[np.ndarray], *, pad_id: int) -> float | None:
    """Largest |output of a row alone - in a padded batch| over ``rows`` (token id arrays of varied lengths) in
    shuffled batches of 4 and of 8; None without rows."""
    from export.quantize_static import max_batch_dependence

    if len(rows) < 2:
        return None
    return max(max_batch_dependence(graph, rows, pad_id=pad_id, batch_size=b, seed=b) for b in (4, 8))


def build_fp16(src: Path, dst: Path, options) -> Path:
    """The fp16 variant."""
    return convert_fp16(src, dst)
