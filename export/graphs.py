"""The torch side of the export: what each ONNX graph computes, and ``torch.onnx.export`` of it.

Read top to bottom: graph IO names -> NerGraph -> SimilarityGraph -> to_onnx (any wrapper: each task's
exporter in ``export.tasks`` names its output and its dynamic axes).

Every graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic ``batch`` and ``seq`` axes):

* ``ner.*.onnx``  -> ``scores`` float32 (batch, types, seq, seq): GlobalPointer span scores, spans
  with j < i or a padded end point set to ``finfo(fp32).min`` (-3.4e38; the fp16 graphs keep the
  head in fp32, see ``export.convert``). Dense scores, not thresholded spans: a graph ending in
  Greater -> NonZero -> GatherND was measured no faster end to end (``bench/quantize.py
  --ner-output``), and dense scores leave the threshold to the runtime.
* ``sim.*.onnx``  -> ``sentence_embedding`` float32 (batch, dim): pooled, whitened (one MatMul + Add),
  L2-normalised; cosine similarity is a dot product.

Exporter: the TorchScript-based one (``dynamo=False``) by default. Both exporters give graphs equal
to PyTorch to ~1e-6 on these models (tests/export/test_variants.py: gp/egp heads, poolings, entropy
scale, embedding projection, rotary value); the legacy one exports in ~0.5 s instead of 4-8 s and its graphs fuse the
same under ONNX Runtime's optimiser. It is deprecated in torch 2.x: ``exporter="dynamo"``
(``--exporter dynamo``) is the drop-in replacement.
RoPE is exported in the rotate-half layout (``models.roformer.use_half_rope_`` on a copy: q/k projection
channels permuted, the same function) instead of the checkpoint's interleaved pairs, whose step-2 slices took
20 % of an int8 NER call in ONNX Runtime.
The wrappers are put in eval mode *before* export: the legacy exporter restores the wrapper's
training flag afterwards, recursively, which would switch dropout on in the wrapped model.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from models.roformer import use_half_rope_
from models.tasks import NerModel, SimilarityModel

log = logging.getLogger(__name__)

INPUTS = ["input_ids", "attention_mask"]
NER_OUTPUT = "scores"
SIM_OUTPUT = "sentence_embedding"  # not "embedding": the dynamo exporter then writes a duplicate name
DEFAULT_OPSET = 18
Exporter = Literal["legacy", "dynamo"]


class NerGraph(nn.Module):
    """(input_ids, attention_mask) -> masked span scores (B, C, T, T), fp32."""

    def __init__(self, model: NerModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        scores, _ = self.model(input_ids, attention_mask)  # (B, C, T, T)
        return scores.float()


class SimilarityGraph(nn.Module):
    """(input_ids, attention_mask) -> pooled, whitened, L2-normalised vectors (B, k), fp32.

    Whitening is ``x @ kernel + bias`` (``models.whitening.Whitening``), so it exports as one MatMul
    and one Add right after pooling.
    """

    def __init__(self, model: SimilarityModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.model.pooled(input_ids, attention_mask)  # (B, H)
        if self.model.whitening is not None:
            x = self.model.whitening(x)  # (B, k)
        return l2_normalize(x.float())


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / max(||x||, eps), as ``models.pooling.l2_normalize`` (F.normalize) but spelled with
    ReduceSum + Sqrt: ONNX Runtime's symbolic shape inference cannot read opset-18 ReduceL2, and
    without shapes its optimiser skips fusions and the fp16 converter loses type information."""
    return x / (x * x).sum(dim=-1, keepdim=True).sqrt().clamp_min(eps)  # (B, k)


def example_inputs(vocab_size: int, *, batch: int = 2, seq: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch to trace with (second row shorter), ids drawn away from the special tokens."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab_size - 1), vocab_size, (batch, seq), generator=g)  # (B, T)
    mask = torch.ones(batch, seq, dtype=torch.long)  # (B, T)
    mask[1:, seq // 2 + 1 :] = 0
    return ids * mask, mask


def to_onnx(
    graph: nn.Module,
    path: str | Path,
    *,
    output: str,
    output_axes: dict[int, str],
    opset: int = DEFAULT_OPSET,
    exporter: Exporter = "legacy",
) -> Path:
    """Export a graph wrapper (``graph.model.encoder`` is its RoFormer encoder) to ``path`` with dynamic
    batch/seq input axes and output ``output`` (its dynamic axes ``output_axes``, e.g. ``{0: "batch"}``);
    returns the path."""
    path = Path(path)
    # a copy with RoPE in the rotate-half layout: the same function without step-2 slices (use_half_rope_)
    graph = use_half_rope_(copy.deepcopy(graph)).eval().requires_grad_(False)
    args = example_inputs(graph.model.encoder.cfg.vocab_size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings and the legacy exporter's deprecation notice
        if exporter == "legacy":
            axes = {name: {0: "batch", 1: "seq"} for name in INPUTS}
            axes[output] = dict(output_axes)
            torch.onnx.export(
                graph, args, str(path), dynamo=False, opset_version=opset,
                input_names=INPUTS, output_names=[output], dynamic_axes=axes,
            )
        elif exporter == "dynamo":
            from torch.export import Dim

            batch, seq = Dim("batch", min=1), Dim("seq", min=2, max=graph.model.encoder.cfg.max_position_embeddings)
            shapes = {name: {0: batch, 1: seq} for name in INPUTS}
            program = torch.onnx.export(
                graph, args, dynamo=True, opset_version=opset, input_names=INPUTS,
                output_names=[output], dynamic_shapes=shapes, verbose=False,
            )
            program.save(str(path))
        else:
            raise ValueError(f"unknown exporter {exporter!r}: choose 'legacy' or 'dynamo'")
    log.debug("exported %s with the %s exporter (opset %d)", path.name, exporter, opset)
    return path
