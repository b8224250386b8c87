"""Similarity's exporter: pooled, whitened, L2-normalised vectors (batch, dim); parity on the vectors and
on the cosines of every sample pair. A plain Hugging Face RoFormer / RoFormer-Sim directory is a
similarity checkpoint too (``load_similarity`` picks its pooling)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.graphs import SIM_OUTPUT, SimilarityGraph
from export.tasks.base import TaskExporter, register_exporter
from export.variants import Parity
from models.bundle import SimilarityTask


@register_exporter
class SimilarityExporter(TaskExporter):
    kind = "similarity"
    file_prefix = "sim"
    output = SIM_OUTPUT
    output_axes = {0: "batch"}
    plain_checkpoint = True

    def load(self, path: Path):
        from models.tasks import load_similarity

        return load_similarity(path)

    def graph(self, model) -> SimilarityGraph:
        return SimilarityGraph(model)

    def parity(self, model, graph, tokenizer, texts) -> Parity:
        import torch

        def torch_run(batch):
            with torch.no_grad():
                return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

        return self._parity(model.cfg.max_length, tokenizer, texts, torch_run)

    def graph_parity(self, spec, tokenizer, texts, reference) -> Parity:
        from export import parity

        return self._parity(spec.max_length, tokenizer, texts, parity.onnx_runner(reference))

    def _parity(self, max_length: int, tokenizer, texts, reference_run) -> Parity:
        from export import parity

        batches = parity.sim_batches(tokenizer, texts, max_length=max_length)

        def run(runner) -> np.ndarray:
            return np.concatenate(parity.run_all(runner, batches))  # (N, k), one row per text

        def compare(ref, got):
            return {"max_abs_diff": parity.max_abs_diff([got], [ref]), **parity.cosine_diffs(ref, got)}

        return Parity(reference=run(reference_run), run=lambda f: run(parity.onnx_runner(f)), compare=compare,
                      finite=lambda out: [out], what="sentence vectors", feeds=[b.feeds for b in batches])

    def spec(self, model, graphs, metrics) -> SimilarityTask:
        return SimilarityTask(graphs=graphs, max_length=model.cfg.max_length, metrics=metrics,
                              pooling=model.cfg.pooling, dim=model.dim, whitening=model.whitening is not None)
