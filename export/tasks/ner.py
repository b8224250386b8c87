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

        from export import parity

        cfg = model.cfg
        batches = parity.ner_batches(tokenizer, texts, max_length=cfg.max_length, stride=cfg.stride)

        def torch_run(batch):
            with torch.no_grad():
                return graph(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).numpy()

        def decode(outputs):
            return parity.decode_entities(outputs, batches, texts=texts, labels=cfg.labels,
                                          threshold=cfg.threshold, decode=cfg.decode)

        def compare(ref, got):
            return {"max_abs_diff": parity.max_abs_diff_spans(got, ref, batches),
                    **parity.entity_agreement(decode(ref), decode(got))}

        return Parity(reference=parity.run_all(torch_run, batches),
                      run=lambda f: parity.run_all(parity.onnx_runner(f), batches), compare=compare,
                      finite=lambda outputs: outputs, what="scores", feeds=[b.feeds for b in batches])

    def spec(self, model, graphs, metrics) -> NerTask:
        cfg = model.cfg
        return NerTask(graphs=graphs, max_length=cfg.max_length, metrics=metrics, labels=list(cfg.labels),
                       head=cfg.head, threshold=cfg.threshold, stride=cfg.stride, decode=cfg.decode)
