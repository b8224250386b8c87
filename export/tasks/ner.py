"""NER's exporter: GlobalPointer span scores (batch, types, seq, seq); parity on scores of real spans and
on the decoded entities."""

from __future__ import annotations

from pathlib import Path

from export.graphs import NER_OUTPUT, NerGraph
from export.tasks.base import TaskExporter, register_exporter
from export.variants import Parity
from models.bundle import NerTask


@register_exporter
class NerExporter(TaskExporter):
    kind = "ner"
    file_prefix = "ner"
    output = NER_OUTPUT
    output_axes = {0: "batch", 2: "seq", 3: "seq"}
    required_files = ("head.safetensors",)  # the GlobalPointer weights

    def load(self, path: Path):
        from models.tasks import load_ner

        return load_ner(path)

    def graph(self, model) -> NerGraph:
        return NerGraph(model)

    def parity(self, model, graph, tokenizer, texts) -> Parity:
        import torch

        def torch_run(batch):
            with torch.no_grad():
                return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

        return self._parity(model.cfg, tokenizer, texts, torch_run)

    def graph_parity(self, spec, tokenizer, texts, reference) -> Parity:
        from export import parity

        return self._parity(spec, tokenizer, texts, parity.onnx_runner(reference))

    def rows(self, settings, tokenizer, texts):
        """Every window of every text, as the service cuts them."""
        from export import parity

        return [b.input_ids[0] for b in parity.ner_batches(tokenizer, texts, max_length=settings.max_length,
                                                           stride=settings.stride, batch_size=1)]

    def _parity(self, cfg, tokenizer, texts, reference_run) -> Parity:
        """``cfg``: the model's NerConfig or the manifest's NerTask (labels, threshold, decode, windows)."""
        from export import parity

        batches = parity.ner_batches(tokenizer, texts, max_length=cfg.max_length, stride=cfg.stride)

        def decode(outputs):
            return parity.decode_entities(outputs, batches, texts=texts, labels=cfg.labels,
                                          threshold=cfg.threshold, decode=cfg.decode)

        def compare(ref, got):
            return {"max_abs_diff": parity.max_abs_diff_spans(got, ref, batches),
                    **parity.entity_agreement(decode(ref), decode(got))}

        return Parity(reference=parity.run_all(reference_run, batches),
                      run=lambda f: parity.run_all(parity.onnx_runner(f), batches), compare=compare,
                      finite=lambda outputs: outputs, what="scores", feeds=[b.feeds for b in batches])

    def spec(self, model, graphs, metrics) -> NerTask:
        cfg = model.cfg
        return NerTask(graphs=graphs, max_length=cfg.max_length, metrics=metrics, labels=list(cfg.labels),
                       head=cfg.head, threshold=cfg.threshold, stride=cfg.stride, decode=cfg.decode)
