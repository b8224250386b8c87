"""The ONNX side of the export (torch-free): offline optimisation, dynamic int8, fp16, graph facts.

Read top to bottom: graph facts (IO names, opset, IR cap) -> optimize (fp32) -> quantize_int8 (CPU)
-> convert_fp16 (GPU) -> the builders the precision registry names (``models.precisions``:
``build_int8``, ``build_fp16``; each ``(src, dst, options) -> dst``).

* ``optimize``: ONNX Runtime's transformer optimiser with ``model_type='bert'`` and ``opt_level=1``
  (basic, provider-independent rewrites; the result serves CPU and CUDA). For RoFormer it fuses
  LayerNorm (+ residual: SkipLayerNormalization) and BiasGelu; attention stays unfused because the
  rotation breaks the pattern.
* ``quantize_int8``: ``quantize_dynamic`` with QInt8 weights on the optimised graph. Only MatMuls
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

import contextlib
import io
import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

MAX_IR_VERSION = 10  # ONNX Runtime reads at most 13; onnx 1.23 writes 14 for graphs it builds


# --------------------------------------------------------------------------------------------
# Graph facts
# --------------------------------------------------------------------------------------------


def graph_io(model: onnx.ModelProto | str | Path) -> tuple[list[str], list[str]]:
    """(input names, output names) of a graph; initializers listed as inputs are not inputs."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def opset_of(model: onnx.ModelProto | str | Path) -> int:
    """The default-domain (ai.onnx) opset a graph imports."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    raise ValueError("graph imports no ai.onnx opset")


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save as one file with the IR version capped at ``MAX_IR_VERSION`` (see FACTS: ORT <= 13)."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    onnx.save_model(model, str(path))
    return Path(path)


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


LAYER_NORMS = {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
               "SkipSimplifiedLayerNormalization", "EmbedLayerNormalization"}


def head_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes that feed the graph outputs without passing through a LayerNorm (the task head).

    Unnamed nodes are given names first (the fp16 converter blocks nodes by name).
    """
    graph = model.graph
    names = {n.name for n in graph.node}
    for k, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_ropenlp_{k}"
            while node.name in names:
                node.name += "_"
            names.add(node.name)
    producer = {out: node for node in graph.node for out in node.output}
    stack, head = [o.name for o in graph.output], {}
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.op_type in LAYER_NORMS or node.name in head:
            continue
        head[node.name] = node
        stack.extend(i for i in node.input if i)
    return list(head)


@contextlib.contextmanager
def _quiet():
    """Silence the ONNX Runtime tools for a block: their INFO and WARNING logs (module-level loggers named after
    their files: ``fusion_base``, ``onnx_model``, ...) and what they print to stdout."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


# --------------------------------------------------------------------------------------------
# Builders: what models.precisions.PRECISIONS[name].builder names
# --------------------------------------------------------------------------------------------


def build_int8(src: Path, dst: Path, options) -> Path:
    """The int8 variant (``options``: ``export.variants.BuildOptions``)."""
    return quantize_int8(src, dst, per_channel=options.per_channel)


def build_fp16(src: Path, dst: Path, options) -> Path:
    """The fp16 variant."""
    return convert_fp16(src, dst)
