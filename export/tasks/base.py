"""The export side of a task kind: what the registry holds (``export.tasks`` lists the built-in kinds).

A :class:`TaskExporter` knows, for its kind: which checkpoint files it needs, how to load the
PyTorch model, the graph wrapper that ONNX gets (its output name and dynamic axes), how the graph's
outputs are checked against PyTorch on the sample texts (:class:`export.variants.Parity`), and the
manifest spec it writes (a :class:`models.bundle.TaskSpec` of its kind). :func:`export.onnx.export_bundle`
does the rest the same way for every kind: variants by the precision registry, checks, manifest, card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.bundle import TASK_SPECS, GraphSpec, TaskSpec
from models.text import Tokenizer


class TaskExporter:
    kind: ClassVar[str]  # a registered manifest kind (models.bundle.register_task_spec)
    file_prefix: ClassVar[str]  # graph files are <prefix>.<precision>.onnx
    output: ClassVar[str]  # the graph's one output name
    output_axes: ClassVar[dict[int, str]]  # its dynamic axes, e.g. {0: "batch"}
    required_files: ClassVar[tuple[str, ...]] = ()  # in the checkpoint, beyond config.json
    plain_checkpoint: ClassVar[bool] = False  # a plain HF RoFormer directory (no ropenlp.json) is accepted

    def load(self, path: Path) -> Any:
        """The task model (``.encoder``: its RoFormerEncoder; ``.cfg.max_length``) from a checkpoint."""
        raise NotImplementedError

    def graph(self, model: Any) -> Any:
        """The torch module ONNX gets: (input_ids, attention_mask) -> the one output, fp32."""
        raise NotImplementedError

    def parity(self, model: Any, graph: Any, tokenizer: Tokenizer, texts: list[str]):
        """An :class:`export.variants.Parity` for the sample ``texts``."""
        raise NotImplementedError

    def spec(self, model: Any, graphs: dict[str, GraphSpec], metrics: dict) -> TaskSpec:
        raise NotImplementedError

    def rows(self, settings: Any, tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of the rows the service runs for ``texts`` (calibration, the batch-dependence check).
        ``settings``: the model's config or the task's manifest spec (``max_length``, ...). Default: one row per
        text, cut to ``max_length`` with ``[SEP]`` kept last."""
        from export.parity import sim_batches

        return [b.input_ids[0] for b in sim_batches(tokenizer, texts, max_length=settings.max_length, batch_size=1)]

    def graph_parity(self, spec: TaskSpec, tokenizer: Tokenizer, texts: list[str], reference: Path):
        """An :class:`export.variants.Parity` whose reference is an ONNX graph file (no PyTorch: re-quantizing a
        written bundle, ``export.requantize``)."""
        raise NotImplementedError(f"the {self.kind} exporter cannot compare graphs without its PyTorch model")


EXPORTERS: dict[str, TaskExporter] = {}


def register_exporter(exporter: type[TaskExporter]) -> type[TaskExporter]:
    """Add a task kind's exporter to the registry; usable as a class decorator."""
    if exporter.kind not in TASK_SPECS:
        raise ValueError(f"{exporter.__name__}: no manifest spec for kind {exporter.kind!r} "
                         "(register it with models.bundle.register_task_spec first)")
    prefixes = {e.file_prefix: k for k, e in EXPORTERS.items() if k != exporter.kind}
    if exporter.file_prefix in prefixes:
        raise ValueError(f"file prefix {exporter.file_prefix!r} is taken by {prefixes[exporter.file_prefix]!r}")
    EXPORTERS[exporter.kind] = exporter()
    return exporter
