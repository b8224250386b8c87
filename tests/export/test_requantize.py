"""Re-quantizing a written bundle's dynamic int8 graphs as static int8 (the shipped bundles' migration): the
dequantized fp32 graph is exact, the new bundle is batch invariant and records how it was made."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.errors import ExportError
from export.quantize_static import max_batch_dependence
from export.requantize import dequantize, requantize_bundle
from models.bundle import load_manifest, sha256
from tests.export.conftest import calibration, padded, session


def legacy_bundle(tiny, dst):
    """The tiny bundle as a format 2 bundle of (dynamic) int8 graphs only, as the shipped ones were written."""
    dst.mkdir()
    raw = json.loads((tiny.bundle / "bundle.json").read_text(encoding="utf-8"))
    shutil.copyfile(tiny.bundle / "tokenizer.json", dst / "tokenizer.json")
    files = {"tokenizer.json": sha256(dst / "tokenizer.json")}
    for spec in raw["tasks"].values():
        g = spec["graphs"]["int8-dynamic"]
        name = g["file"].replace("int8-dynamic", "int8")
        shutil.copyfile(tiny.bundle / g["file"], dst / name)
        files[name] = sha256(dst / name)
        del g["quantization"]
        spec["graphs"] = {"int8": g | {"file": name, "precision": "int8"}}
    (dst / "bundle.json").write_text(json.dumps(raw | {"format_version": 2, "files": files}), encoding="utf-8")
    return dst


def test_dequantize_rebuilds_every_matmul_exactly(tiny, tmp_path):
    dyn = onnx.load(str(tiny.bundle / "ner.int8-dynamic.onnx"))
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tiny.bundle / "ner.fp32.onnx")).graph.initializer}
    inits = {t.name: numpy_helper.to_array(t) for t in dyn.graph.initializer}
    out, rebuilt = dequantize(dyn)
    ops = [n.op_type for n in out.graph.node]
    assert rebuilt == ops.count("MatMul") - 5 == 12  # 2 layers x 6 encoder MatMuls; q.k, p.v and the head were fp32
    assert not {"MatMulInteger", "DynamicQuantizeLinear"} & set(ops)
    before = [n.op_type for n in onnx.load(str(tiny.bundle / "ner.fp32.onnx")).graph.node]
    assert sorted(ops) == sorted(before)  # every other node as it was: the same graph as the optimised fp32
    weights = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    for node in (n for n in dyn.graph.node if n.op_type == "MatMulInteger"):
        q, zero = inits[node.input[1]], inits[node.input[3]]
        scale_mul = next(n for n in dyn.graph.node if n.name == node.name + "_scales_mul")
        scale = inits[next(i for i in scale_mul.input if i in inits)]
        w = weights[node.name.removesuffix("_quant") + ".dequantized_weight"]
        assert w.shape == q.shape and scale.shape == (q.shape[1],)  # per output channel
        assert np.array_equal(w, (scale[None, :] * (q.astype(np.float32) - zero[None, :])).astype(np.float32))
        original = fp32[node.input[1].removesuffix("_quantized")]
        assert np.abs(w - original).max() <= scale.max() / 2 * (1 + 1e-6)  # the int8 rounding, nothing more
    ids, mask, _ = padded(tiny.tokenizer)
    feeds = {"input_ids": ids, "attention_mask": mask}
    from export.graph_tools import save

    got = session(save(out, tmp_path / "ner.dequantized.onnx")).run(None, feeds)[0]
    want = session(tiny.bundle / "ner.fp32.onnx").run(None, feeds)[0]
    real = want > -1e30
    assert 0 < np.abs(got - want)[real].max() < 0.02  # weight rounding only (dynamic int8 also rounds activations)


def test_requantize_a_legacy_bundle(tiny, tmp_path):
    old = legacy_bundle(tiny, tmp_path / "old")
    assert {t: list(s.graphs) for t, s in load_manifest(old).tasks.items()} == {
        "ner": ["int8-dynamic"], "similarity": ["int8-dynamic"]}
    with pytest.raises(ExportError, match=r"no calibration texts for \['similarity'\]"):
        requantize_bundle(old, tmp_path / "x", calibration("ner"))
    with pytest.raises(ExportError, match="pass overwrite=True"):
        requantize_bundle(old, old, calibration("ner", "similarity"))
    m = requantize_bundle(old, tmp_path / "new", calibration("ner", "similarity"), size=48, seed=1,
                          fp32_out=tmp_path / "fp32")
    new = load_manifest(tmp_path / "new")
    assert new == m and new.format_version == 3 and new.tasks["ner"].labels == tiny.manifest.tasks["ner"].labels
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [
        "MODEL_CARD.md", "bundle.json", "ner.int8.onnx", "sim.int8.onnx", "tokenizer.json"]
    for task, prefix in (("ner", "ner"), ("similarity", "sim")):
        g = new.tasks[task].graphs["int8"]
        q = g.quantization
        assert list(new.tasks[task].graphs) == ["int8"] and g.file == f"{prefix}.int8.onnx"
        assert (q.mode, q.batch_invariant, q.matmuls_int8, q.calibration.texts, q.calibration.seed) == (
            "static", True, 12, 48, 1)
        assert q.source.startswith(f"fp32 dequantized from the int8-dynamic graph {prefix}.int8.onnx")
        assert g.parity["reference"] == "fp32 (dequantized)"
        rows = [r for r in tiny.tokenizer.encode_ids(list(tiny_texts())) if len(r) <= new.tasks[task].max_length]
        assert max_batch_dependence(session(tmp_path / "new" / g.file), rows, pad_id=tiny.tokenizer.pad_id) <= 1e-4
        ref = load_manifest(tmp_path / "fp32").tasks[task].graphs["fp32"]
        assert ref.file == f"{prefix}.fp32.onnx" and ref.parity["matmuls_rebuilt"] == 12
    assert new.tasks["ner"].graphs["int8"].parity["entity_f1"] > 80
    assert "re-quantized as static int8" in new.provenance.notes
    assert "quantized from fp32 dequantized" in (tmp_path / "new" / "MODEL_CARD.md").read_text(encoding="utf-8")
    with pytest.raises(ExportError, match="no dynamic int8 graph"):
        requantize_bundle(tmp_path / "new", tmp_path / "again", calibration("ner"))


def test_requantize_command_in_place(tiny, tmp_path):
    from typer.testing import CliRunner

    from ropenlp.cli import app

    old = legacy_bundle(tiny, tmp_path / "old")
    data = tmp_path / "train.txt"  # a kind's training data as plain text lines would do too; NER reads CLUENER here
    data.write_text("".join(json.dumps({"text": t, "label": {}}, ensure_ascii=False) + "\n" for t in tiny_texts()),
                    encoding="utf-8")
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{a}\t{b}\t0\n" for a, b in zip(tiny_texts(), tiny_texts()[1:])), encoding="utf-8")
    args = ["requantize", str(old), "-o", str(old), "--calibration-data", f"ner={data}",
            "--calibration-data", f"similarity={pairs}", "--calibration-size", "32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "pass overwrite=True / --overwrite" in result.output
    result = CliRunner().invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "ner int8: ner.int8.onnx" in result.output and "static int8, batch dependence" in result.output
    m = load_manifest(old)
    assert m.tasks["ner"].graphs["int8"].quantization.calibration.source == str(data)


def tiny_texts() -> list[str]:
    from tests.export.conftest import calibration_texts

    return calibration_texts()
