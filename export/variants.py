"""One task's graph variants: export the torch graph, build every precision the registry lists
(``models.precisions``), check each against its reference, describe them for the manifest.

Read top to bottom: :class:`Parity` (what a task exporter tells about its outputs) -> :func:`build`
(export -> reference fp32 -> the other variants by their registry builders) -> :func:`check` (each
variant against its reference; a gated one fails the export above the tolerance) -> :func:`specs`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import check_finite, fail_above, stage
from models.bundle import GraphSpec
from models.precisions import DEFAULT_CALIBRATION_METHOD, PRECISIONS, PYTORCH, build_order

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parity:
    """How one task's outputs are checked: the reference outputs of PyTorch on the sample, how to run a
    graph file on the same sample, and how two outputs compare (a dict whose ``max_abs_diff`` the
    gate reads; the rest is recorded in the manifest)."""

    reference: Any  # PyTorch's outputs on the sample
    run: Callable[[Path], Any]  # graph file -> its outputs on the sample
    compare: Callable[[Any, Any], dict[str, Any]]  # (reference outputs, outputs) -> measures
    finite: Callable[[Any], Sequence[np.ndarray]]  # outputs -> the arrays that must hold no NaN / +inf
    what: str  # what is compared, for messages ("scores", "sentence vectors")
    feeds: Sequence[dict[str, np.ndarray]] = ()  # the sample as model feeds (calibration of a variant)


@dataclass(frozen=True)
class CalibrationTexts:
    """Texts a calibrated variant may draw from (the task's training data) and where they come from."""

    source: str  # for the manifest, e.g. "cluener/train.json"
    texts: Sequence[str]


@dataclass(frozen=True)
class CalibrationRecord:
    """What the manifest says of a calibrated variant's texts: where from, how many were drawn, the seed."""

    source: str
    texts: int
    seed: int


@dataclass(frozen=True)
class BuildOptions:
    """What the registry's builders (``export.convert``) may use."""

    per_channel: bool = True  # int8: one weight scale per output channel
    # calibrated variants (static int8): one unpadded batch per row of the calibration texts, and their record
    calibration: Sequence[dict[str, np.ndarray]] = ()
    calibration_record: CalibrationRecord | None = None
    method: str = DEFAULT_CALIBRATION_METHOD  # activation ranges: minmax | entropy | percentile (export.quantize_static)
    # the batch-dependence check: token id rows of varied lengths, each run alone and in padded batches
    check_rows: Sequence[np.ndarray] = ()
    pad_id: int = 0
    source_note: str | None = None  # what the builder's input graph is, when not the export (requantize)


def build(graph, staging: Path, *, prefix: str, task: str, output: str, output_axes: dict[int, str],
          precisions: Sequence[str], opset: int, exporter: str, encoder_cfg, options: BuildOptions) -> dict[str, Path]:
    """Export ``graph``, optimise it (the reference variant) and build the other variants ``precisions``
    need, each from its reference or from the raw export (the registry's ``source``): ``{precision: Built}``
    in build order."""
    from export import convert
    from export.graphs import to_onnx

    raw = staging / f"{prefix}.raw.onnx"
    files: dict[str, convert.Built] = {}
    with stage(f"torch.onnx.export ({exporter} exporter) of the {task} graph"):
        to_onnx(graph, raw, output=output, output_axes=output_axes, opset=opset, exporter=exporter)
    for name in build_order(precisions):
        kind = PRECISIONS[name]
        dst = staging / f"{prefix}.{name}.onnx"
        if kind.builder is None:  # the reference: the optimised export
            with stage(f"ONNX Runtime's optimiser on {dst.name}"):
                files[name] = convert.Built(convert.optimize(raw, dst, num_heads=encoder_cfg.num_attention_heads,
                                                             hidden_size=encoder_cfg.hidden_size))
        else:
            files[name] = build_variant(name, raw if kind.source == "export" else files[kind.reference].file, dst,
                                        options)
    raw.unlink()
    return files


def build_variant(name: str, src: Path, dst: Path, options: BuildOptions):
    """One registry variant by its builder -> ``export.convert.Built``."""
    from export import convert

    kind = PRECISIONS[name]
    with stage(f"{name} ({kind.summary}) of {src.name}"):
        built = getattr(convert, kind.builder)(src, dst, options)
    return built if isinstance(built, convert.Built) else convert.Built(Path(built))


def check(files: dict[str, Path], parity: Parity, *, tolerance: float, texts: int,
          references: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each variant against its reference (PyTorch, or the variant the registry names); raise when a gated
    one differs by more than ``tolerance``. ``references``: outputs of references not in ``files`` (by name)."""
    outputs: dict[str, Any] = {PYTORCH: parity.reference, **(references or {})}
    report: dict[str, dict[str, Any]] = {}
    for name, file in files.items():
        kind = PRECISIONS[name]
        got = parity.run(file)
        measures = parity.compare(outputs[kind.reference], got)
        if kind.gate:
            fail_above(measures["max_abs_diff"], tolerance, file, parity.what,
                       "PyTorch" if kind.reference == PYTORCH else kind.reference)
        else:
            check_finite(parity.finite(got), file)
        outputs[name] = got
        report[name] = {"reference": kind.reference, "max_abs_diff": measures.pop("max_abs_diff"), "texts": texts,
                        **measures}
    return report


def specs(built: dict[str, Any], report: dict[str, dict[str, Any]], keep: Sequence[str]) -> dict[str, GraphSpec]:
    """GraphSpecs of the variants asked for (``built``: ``{precision: export.convert.Built}``); the others
    (references built only to check) are deleted."""
    from export import convert

    out = {}
    for name, b in built.items():
        f = b.file
        if name not in keep:
            f.unlink()
            continue
        inputs, outputs = convert.graph_io(f)
        out[name] = GraphSpec(file=f.name, precision=name, opset=convert.opset_of(f), inputs=inputs,
                              outputs=outputs, parity=report[name], quantization=b.quantization)
    return out
