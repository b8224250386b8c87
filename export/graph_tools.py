"""Graph facts and helpers shared by the variant builders (torch-free): IO names, opset, saving under the IR
cap, the task head's nodes, silencing ONNX Runtime's tools. ``export.convert`` and ``export.quantize_static``
both use them (so neither imports the other's module for them).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import onnx

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
def quiet():
    """Silence the ONNX Runtime tools for a block: their INFO and WARNING logs (module-level loggers named after
    their files: ``fusion_base``, ``onnx_model``, ...) and what they print to stdout."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def drop_unused(model: onnx.ModelProto, *, initializers: bool = False) -> None:
    """Remove nodes none of whose outputs is read, repeatedly (e.g. Q/DQ pairs or DynamicQuantizeLinear
    nodes left without a reader); with ``initializers``, then the initializers nothing reads."""
    graph = model.graph

    def read() -> set[str]:
        return {i for n in graph.node for i in n.input} | {o.name for o in graph.output}

    while True:
        names = read()
        dead = [n for n in graph.node if not any(o in names for o in n.output if o)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    if initializers:
        names = read()
        for t in [t for t in graph.initializer if t.name not in names]:
            graph.initializer.remove(t)
