"""Model options and the other exporter: each exports, and its fp32 graph matches PyTorch (checked by
the export's own parity gate, then once more here on a padded batch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from export.onnx import export_bundle
from export.parity import span_mask
from models.roformer import RoFormerEncoder
from models.tasks import NerConfig, NerModel, SimilarityConfig, SimilarityModel, load_ner, load_similarity
from tests.export.conftest import calibration, encoder_config, padded, session

CASES = {
    "ner-egp-entropy-scale": lambda n: NerModel(
        RoFormerEncoder(encoder_config(n, entropy_invariant_scale=True)),
        NerConfig(labels=("A", "B"), head="egp", head_size=8, max_length=32, stride=16)),
    "ner-gp-embedding-projection-rotary-value": lambda n: NerModel(
        RoFormerEncoder(encoder_config(n, embedding_size=24, rotary_value=True)),
        NerConfig(labels=("A",), head="gp", head_size=8, max_length=32, stride=16)),
    "sim-first-last-avg": lambda n: SimilarityModel(
        RoFormerEncoder(encoder_config(n)), SimilarityConfig(pooling="first-last-avg", max_length=40)),
    "sim-mean-no-whitening": lambda n: SimilarityModel(
        RoFormerEncoder(encoder_config(n, entropy_invariant_scale=True)), SimilarityConfig(pooling="mean")),
}


def check_against_torch(tiny, task: str, ckpt, graph_file) -> None:
    ids, mask, _ = padded(tiny.tokenizer)
    model = (load_ner if task == "ner" else load_similarity)(ckpt).eval()
    with torch.no_grad():
        want = model(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()
    got = session(graph_file).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    keep = np.broadcast_to(span_mask(mask), got.shape) if task == "ner" else np.ones(got.shape, bool)
    assert np.abs(got - want)[keep].max() < 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_model_options_export_exactly(tiny, tmp_path, case):
    torch.manual_seed(5)
    task = "ner" if case.startswith("ner") else "similarity"
    CASES[case](tiny.tokenizer.vocab_size).save(tmp_path / "ckpt", tokenizer_from=tiny.vocab)
    m = export_bundle(tmp_path / "bundle", **{task: tmp_path / "ckpt"}, precisions=("fp32", "int8"),
                      calibration=calibration(task), calibration_size=24)
    spec = m.tasks[task]
    assert spec.graphs["fp32"].parity["max_abs_diff"] < 1e-4
    assert spec.graphs["int8"].quantization.batch_dependence <= 1e-4  # static int8 of every model option
    check_against_torch(tiny, task, tmp_path / "ckpt", tmp_path / "bundle" / spec.graphs["fp32"].file)
    assert strided_slices(tmp_path / "bundle" / spec.graphs["fp32"].file) == []  # RoPE: rotate-half layout


def strided_slices(path) -> list[str]:
    """Names of the Slice nodes of a graph whose step is not 1 (RoPE's interleaved pairs were two per q/k)."""
    import onnx
    from onnx import numpy_helper

    g = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts |= {n.output[0]: numpy_helper.to_array(a.t) for n in g.node if n.op_type == "Constant"
               for a in n.attribute if a.name == "value"}
    return [n.name for n in g.node if n.op_type == "Slice" and len(n.input) > 4
            and n.input[4] in consts and np.any(consts[n.input[4]] != 1)]


def test_dynamo_exporter(tiny, tmp_path):
    pytest.importorskip("onnxscript")
    m = export_bundle(tmp_path / "bundle", ner=tiny.ner, exporter="dynamo")
    assert m.tasks["ner"].graphs["fp32"].inputs == ["input_ids", "attention_mask"]
    assert m.tasks["ner"].graphs["fp32"].outputs == ["scores"]
    assert m.tasks["ner"].graphs["fp32"].parity["entities_changed"] == 0
    check_against_torch(tiny, "ner", tiny.ner, tmp_path / "bundle" / "ner.fp32.onnx")
