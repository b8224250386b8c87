"""Exported graphs against PyTorch: NER scores, similarity vectors, folded whitening, decoded entities,
and the fp16 / int8 variants (correctness on ONNX Runtime's CPU provider, not speed)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.parity import SAMPLE_TEXTS, span_mask
from models.spans import decode_batch
from models.tasks import load_ner, load_similarity
from models.whitening import apply_whitening
from tests.export.conftest import PADDED_TEXTS, WHITENING_K, padded, session


def run(path, ids, mask) -> np.ndarray:
    return session(path).run(None, {"input_ids": ids, "attention_mask": mask})[0]


def torch_ner(tiny, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return load_ner(tiny.ner).eval()(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()


def torch_sim(tiny, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return load_similarity(tiny.sim).eval()(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()


def decode(tiny, scores, offsets, texts):
    return decode_batch(scores, offsets_list=offsets, labels=tiny.manifest.tasks["ner"].labels, texts=texts,
                        threshold=tiny.manifest.tasks["ner"].threshold)


def test_ner_fp32_matches_pytorch_on_padded_batch(tiny):
    ids, mask, _ = padded(tiny.tokenizer)
    assert len(set(mask.sum(1).tolist())) == len(PADDED_TEXTS)  # really different lengths
    want, got = torch_ner(tiny, ids, mask), run(tiny.bundle / "ner.fp32.onnx", ids, mask)
    assert got.dtype == np.float32 and got.shape == want.shape == (4, 3, ids.shape[1], ids.shape[1])
    keep = np.broadcast_to(span_mask(mask), got.shape)
    assert np.abs(got - want)[keep].max() < 1e-4
    assert (got[~keep] <= np.finfo(np.float32).min).all()  # padding and j < i masked


def test_similarity_fp32_matches_pytorch_on_padded_batch(tiny):
    ids, mask, _ = padded(tiny.tokenizer)
    want, got = torch_sim(tiny, ids, mask), run(tiny.bundle / "sim.fp32.onnx", ids, mask)
    assert got.dtype == np.float32 and got.shape == (4, WHITENING_K)
    assert np.abs(got - want).max() < 1e-4


def test_folded_whitening_equals_numpy_whitening(tiny):
    ids, mask, _ = padded(tiny.tokenizer)
    model = load_similarity(tiny.sim).eval()
    with torch.no_grad():
        pooled = model.pooled(torch.from_numpy(ids), torch.from_numpy(mask)).double().numpy()  # (B, H)
    y = apply_whitening(pooled, tiny.mu, tiny.W, WHITENING_K)  # (B, k)
    want = y / np.linalg.norm(y, axis=-1, keepdims=True)
    got = run(tiny.bundle / "sim.fp32.onnx", ids, mask)
    assert np.abs(got - want).max() < 1e-5


def test_decoded_entities_identical_pytorch_vs_onnx(tiny):
    ids, mask, offsets = padded(tiny.tokenizer)
    want = decode(tiny, torch_ner(tiny, ids, mask), offsets, PADDED_TEXTS)
    got = decode(tiny, run(tiny.bundle / "ner.fp32.onnx", ids, mask), offsets, PADDED_TEXTS)
    assert sum(map(len, want)) > 0  # the comparison is not vacuous
    assert [[(e.start, e.end, e.label, e.text) for e in es] for es in got] == \
        [[(e.start, e.end, e.label, e.text) for e in es] for es in want]
    assert np.allclose([e.score for es in got for e in es], [e.score for es in want for e in es], atol=1e-4)


def test_fp32_parity_recorded(tiny):
    ner, sim = tiny.manifest.tasks["ner"].graphs["fp32"].parity, tiny.manifest.tasks["similarity"].graphs["fp32"].parity
    assert ner["reference"] == sim["reference"] == "pytorch"
    assert 0 <= ner["max_abs_diff"] < 1e-4 and 0 <= sim["max_abs_diff"] < 1e-4
    assert ner["entities"] > 0 and ner["entities_changed"] == 0 and ner["entity_f1"] == 100
    assert ner["texts"] == len(SAMPLE_TEXTS)


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_int8_parity_fields_filled(tiny, precision):
    ner = tiny.manifest.tasks["ner"].graphs[precision].parity
    sim = tiny.manifest.tasks["similarity"].graphs[precision].parity
    assert ner["reference"] == sim["reference"] == "fp32"
    assert {"entity_f1", "entities_changed", "entities", "max_abs_diff"} <= set(ner)
    assert {"cosine_max_abs_diff", "cosine_mean_abs_diff", "max_abs_diff"} <= set(sim)
    assert ner["entity_f1"] > 80
    assert sim["cosine_max_abs_diff"] < 0.1


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic", "fp16"])
def test_variant_runs_on_cpu_with_float32_outputs(tiny, precision):
    ids, mask, offsets = padded(tiny.tokenizer)
    scores = run(tiny.bundle / f"ner.{precision}.onnx", ids, mask)
    ref = run(tiny.bundle / "ner.fp32.onnx", ids, mask)
    assert scores.dtype == np.float32 and scores.shape == ref.shape
    keep = np.broadcast_to(span_mask(mask), scores.shape)
    assert np.isfinite(scores).all()  # masked spans stay finite: no -inf, no NaN
    assert scores[keep].min() > -1e4 and (scores[~keep] < -1e4).all()
    got, want = decode(tiny, scores, offsets, PADDED_TEXTS), decode(tiny, ref, offsets, PADDED_TEXTS)
    got = {(b, e.start, e.end, e.label) for b, es in enumerate(got) for e in es}
    want = {(b, e.start, e.end, e.label) for b, es in enumerate(want) for e in es}
    assert want and len(got & want) >= 0.8 * len(want)  # mostly equal

    vec = run(tiny.bundle / f"sim.{precision}.onnx", ids, mask)
    ref = run(tiny.bundle / "sim.fp32.onnx", ids, mask)
    assert vec.dtype == np.float32 and np.isfinite(vec).all()
    assert np.abs(vec @ vec.T - ref @ ref.T).max() < 0.05


def test_fp16_graph_is_fp16_inside(tiny):
    import onnx

    model = onnx.load(str(tiny.bundle / "ner.fp16.onnx"))
    types = {t.data_type for t in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    parity = tiny.manifest.tasks["ner"].graphs["fp16"].parity
    assert parity["reference"] == "fp32" and parity["entity_f1"] > 80


@pytest.mark.parametrize("precision", ["int8", "int8-dynamic"])
def test_int8_keeps_the_task_heads_in_fp32(tiny, precision):
    """Only encoder MatMuls become integer MatMuls: the span projections and the whitening MatMul
    (fused into a Gemm by the optimiser, which the dynamic quantizer splits and renames) keep fp32 kernels.
    (Static int8 quantizes the raw export, whose head is found the same way: ``export.quantize_static``.)"""
    from export.convert import head_nodes, quantized_nodes
    from export.quantize_static import head_inputs_quantized, quantized_matmuls

    for task in ("ner", "sim"):
        int8 = onnx.load(str(tiny.bundle / f"{task}.{precision}.onnx"))
        done = quantized_nodes(int8) | quantized_matmuls(int8)
        assert sum("/encoder/" in name for name in done) == 12  # the encoder is quantized ...
        fp32 = onnx.load(str(tiny.bundle / f"{task}.fp32.onnx"))
        head = set(head_nodes(fp32))
        assert not {n for n in done if n in head or n.removesuffix("_MatMul") in head}  # ... its head is not
        assert not head_inputs_quantized(int8, [n for n in head if n in {x.name for x in int8.graph.node}])
    floats = {t.name for t in onnx.load(str(tiny.bundle / f"sim.{precision}.onnx")).graph.initializer
              if t.data_type == onnx.TensorProto.FLOAT}
    assert "model.whitening.kernel" in floats
