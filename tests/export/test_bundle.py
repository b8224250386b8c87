"""The written bundle against the contract in models/bundle.py: round trip, corruption, export errors."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

import ropenlp
from export.onnx import ExportError, export_bundle
from models.bundle import BundleError, check_graph_io, load_manifest, write_manifest
from models.text import Tokenizer
from tests.export.conftest import LABELS, WHITENING_K, calibration, session


@pytest.fixture
def bundle_copy(tiny, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny.bundle, dst)
    return dst


def test_round_trip_with_real_session_names(tiny):
    m = load_manifest(tiny.bundle)
    assert m == tiny.manifest
    assert sorted(p.name for p in tiny.bundle.iterdir()) == sorted(
        ["MODEL_CARD.md", "bundle.json", "tokenizer.json"] + [f"{t}.{p}.onnx" for t in ("ner", "sim") for p in ("fp32", "fp16", "int8", "int8-dynamic")]
    )
    for spec in m.tasks.values():
        assert set(spec.graphs) == {"fp32", "fp16", "int8", "int8-dynamic"}
        for g in spec.graphs.values():
            s = session(tiny.bundle / g.file)
            check_graph_io(g, inputs=[i.name for i in s.get_inputs()], outputs=[o.name for o in s.get_outputs()])
            assert [i.name for i in s.get_inputs()] == ["input_ids", "attention_mask"]
            assert [i.type for i in s.get_inputs()] == ["tensor(int64)"] * 2
            assert [o.type for o in s.get_outputs()] == ["tensor(float)"]
            assert g.opset >= 17 and onnx.load(str(tiny.bundle / g.file)).ir_version <= 13


def test_manifest_fields(tiny):
    m = tiny.manifest
    assert m.name == "tiny" and m.format_version == 3 and m.lowercase is True
    assert m.tasks["ner"].labels == list(LABELS) and m.tasks["ner"].head == "gp" and m.tasks["ner"].max_length == 24 and m.tasks["ner"].stride == 12
    assert m.tasks["ner"].threshold > 0  # the fixture's tuned threshold travelled from ropenlp.json
    assert m.tasks["ner"].decode == "nested"  # the checkpoint's (its NerConfig default)
    assert m.tasks["ner"].graphs["fp32"].outputs == ["scores"]
    assert m.tasks["ner"].metrics == {"f1": 0.5, "precision": 0.25, "per_label": {"PER": 0.5}, "split": "dev"}  # list dropped
    assert m.tasks["similarity"].metrics == {}
    sim = m.tasks["similarity"]
    assert sim.pooling == "linear" and sim.dim == WHITENING_K and sim.whitening is True and sim.max_length == 32
    assert sim.graphs["int8"].outputs == ["sentence_embedding"]
    p = m.provenance
    assert p.ropenlp_version == ropenlp.__version__ and p.notes == "test fixture"
    assert [(d.name, d.terms) for d in p.training_data] == [("tiny-random", "CC0-1.0")]
    assert str(tiny.ner.resolve()) in p.base_checkpoint and str(tiny.sim.resolve()) in p.base_checkpoint
    assert set(m.files) == set(m.referenced_files())


def test_decode_travels_from_the_checkpoint(tiny, tmp_path):
    ner = tmp_path / "ner"
    shutil.copytree(tiny.ner, ner)
    meta = json.loads((ner / "ropenlp.json").read_text(encoding="utf-8"))
    (ner / "ropenlp.json").write_text(json.dumps(meta | {"decode": "flat"}), encoding="utf-8")
    m = export_bundle(tmp_path / "out", ner=ner, precisions=("fp32",))
    assert m.tasks["ner"].decode == "flat" and load_manifest(tmp_path / "out").tasks["ner"].decode == "flat"
    flat, nested = m.tasks["ner"].graphs["fp32"].parity, tiny.manifest.tasks["ner"].graphs["fp32"].parity
    assert flat["entity_f1"] == 100.0 and 0 < flat["entities"] <= nested["entities"]  # parity as served: flat


def test_tokenizer_in_bundle_matches_checkpoint(tiny):
    ours, theirs = Tokenizer.load(tiny.bundle / "tokenizer.json"), Tokenizer.from_vocab(tiny.vocab)
    text = "李明在北京大学读书。Hello 😀"
    a, b = ours.encode(text), theirs.encode(text)
    assert a.ids.tolist() == b.ids.tolist() and a.offsets.tolist() == b.offsets.tolist()


# --------------------------------------------------------------------------------------------
# Corrupted bundles
# --------------------------------------------------------------------------------------------


def test_missing_file(bundle_copy):
    (bundle_copy / "ner.int8.onnx").unlink()
    with pytest.raises(BundleError, match=r"ner\.int8\.onnx.*missing"):
        load_manifest(bundle_copy)


def test_missing_manifest(bundle_copy):
    (bundle_copy / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_manifest(bundle_copy)


def test_bad_json(bundle_copy):
    f = bundle_copy / "bundle.json"
    f.write_text(f.read_text(encoding="utf-8")[:-20], encoding="utf-8")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(bundle_copy)


def test_wrong_format_version(bundle_copy):
    f = bundle_copy / "bundle.json"
    raw = json.loads(f.read_text(encoding="utf-8"))
    raw["format_version"] = 99
    f.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(BundleError, match="format_version 99"):
        load_manifest(bundle_copy)


def test_hash_mismatch_after_flipping_a_byte(bundle_copy):
    f = bundle_copy / "sim.fp32.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sim\.fp32\.onnx.*SHA-256 mismatch"):
        load_manifest(bundle_copy)
    load_manifest(bundle_copy, verify_hashes=False)  # only the hash check notices


def test_graph_io_names_not_matching_manifest(bundle_copy):
    m = load_manifest(bundle_copy)
    ner = m.tasks["ner"].model_copy(update={"graphs": {
        p: g.model_copy(update={"outputs": ["logits"]}) if p == "fp32" else g for p, g in m.tasks["ner"].graphs.items()}})
    write_manifest(bundle_copy, m.model_copy(update={"tasks": m.tasks | {"ner": ner}}))
    g = load_manifest(bundle_copy).tasks["ner"].graphs["fp32"]
    s = session(bundle_copy / g.file)
    with pytest.raises(BundleError, match=r"ner\.fp32\.onnx.*outputs.*scores.*logits"):
        check_graph_io(g, inputs=[i.name for i in s.get_inputs()], outputs=[o.name for o in s.get_outputs()])


# --------------------------------------------------------------------------------------------
# Export errors
# --------------------------------------------------------------------------------------------


def test_fp32_parity_failure_fails_the_export(tiny, tmp_path, monkeypatch):
    """A graph broken after export (here: the optimiser's output corrupted) is caught by the parity check."""
    import numpy as np
    from onnx import numpy_helper

    from export import convert

    real = convert.optimize

    def broken(src, dst, **kw):
        real(src, dst, **kw)
        model = onnx.load(str(dst))
        inits = {t.name: t for t in model.graph.initializer}
        last = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits][-1]
        w = numpy_helper.to_array(inits[last])  # the span head's projection
        inits[last].CopyFrom(numpy_helper.from_array(w * np.float32(1.01), last))
        return convert.save(model, dst)

    monkeypatch.setattr(convert, "optimize", broken)
    out = tmp_path / "bad"
    with pytest.raises(ExportError, match=r"ner\.fp32\.onnx.*differ from PyTorch.*tolerance 0\.001"):
        export_bundle(out, ner=tiny.ner)
    assert not out.exists() and not list(tmp_path.glob(".bad*"))  # nothing half-written left behind


def test_different_vocabularies_rejected(tiny, tmp_path):
    other = tmp_path / "sim"
    shutil.copytree(tiny.sim, other)
    with open(other / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("新词\n")
    with pytest.raises(ExportError, match="different vocabularies"):
        export_bundle(tmp_path / "out", ner=tiny.ner, similarity=other)


def test_checkpoint_of_the_wrong_task(tiny, tmp_path):
    with pytest.raises(ExportError, match="similarity checkpoint was given as the ner model"):
        export_bundle(tmp_path / "out", ner=tiny.sim)


def test_bad_precision_and_nothing_to_export(tiny, tmp_path):
    with pytest.raises(ExportError, match="bf16"):
        export_bundle(tmp_path / "out", ner=tiny.ner, precisions=("bf16",))
    with pytest.raises(ExportError, match="nothing to export"):
        export_bundle(tmp_path / "out")


def test_existing_output_needs_overwrite(tiny, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(ExportError, match="not empty"):
        export_bundle(out, similarity=tiny.sim)
    with pytest.raises(ExportError, match="refusing to overwrite"):
        export_bundle(out, similarity=tiny.sim, overwrite=True)
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_plain_hugging_face_roformer_as_similarity(tiny, tmp_path):
    """A RoFormer(-Sim) directory without ropenlp.json exports as a similarity model (pooling picked by
    load_similarity: "linear" when it has pooler weights, else "cls")."""
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(4)
    vocab = tiny.vocab.read_text(encoding="utf-8").splitlines()
    cfg = transformers.RoFormerConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=37, max_position_embeddings=64)
    hf = tmp_path / "hf"
    transformers.RoFormerModel(cfg).save_pretrained(hf)
    shutil.copy(tiny.vocab, hf / "vocab.txt")
    m = export_bundle(tmp_path / "out", similarity=hf)
    assert m.tasks["similarity"].pooling == "cls" and m.tasks["similarity"].whitening is False and m.tasks["similarity"].dim == 32
    assert m.tasks["similarity"].graphs["fp32"].parity["max_abs_diff"] < 1e-4


def test_precisions_per_task(tiny, tmp_path):
    """int8 NER beside an fp32 similarity model; the CPU runtime then picks int8 and fp32 respectively."""
    from models.bundle import load_manifest

    export_bundle(tmp_path / "mixed", ner=tiny.ner, similarity=tiny.sim,
                  precisions={"ner": ["int8"], "similarity": ["fp32"]}, calibration=calibration("ner"))
    m = load_manifest(tmp_path / "mixed")
    assert list(m.tasks["ner"].graphs) == ["int8"] and list(m.tasks["similarity"].graphs) == ["fp32"]
    assert (m.tasks["ner"].pick("cpu").precision, m.tasks["similarity"].pick("cpu").precision) == ("int8", "fp32")
    with pytest.raises(ExportError, match=r"no precision given for \['similarity'\]"):
        export_bundle(tmp_path / "x", ner=tiny.ner, similarity=tiny.sim, precisions={"ner": ["int8"]})
    with pytest.raises(ExportError, match=r"precisions given for \['similarity'\]"):
        export_bundle(tmp_path / "y", ner=tiny.ner, precisions={"ner": ["fp32"], "similarity": ["fp32"]})


def test_static_int8_needs_calibration_texts_and_records_them(tiny, tmp_path):
    """Never calibrated silently on the parity sample: static int8 without training texts fails, naming the
    option; int8-dynamic needs none and says it depends on the batch."""
    with pytest.raises(ExportError, match=r"int8 of the ner model needs calibration texts.*--calibration-data ner="):
        export_bundle(tmp_path / "x", ner=tiny.ner, precisions=("int8",))
    assert not (tmp_path / "x").exists()
    with pytest.raises(ExportError, match=r"calibration data given for \['similarity'\]"):
        export_bundle(tmp_path / "y", ner=tiny.ner, precisions=("int8",), calibration=calibration("ner", "similarity"))
    m = export_bundle(tmp_path / "dyn", ner=tiny.ner, precisions=("int8-dynamic",))
    q = m.tasks["ner"].graphs["int8-dynamic"].quantization
    assert q.mode == "dynamic" and q.batch_invariant is False and q.batch_dependence > 1e-4 and q.calibration is None
    q = tiny.manifest.tasks["ner"].graphs["int8"].quantization
    assert (q.mode, q.format, q.batch_invariant, q.activations, q.weights) == (
        "static", "qdq", True, "uint8 per-tensor, calibrated", "int8 per-channel")
    assert q.batch_dependence <= 1e-4 and q.matmuls_int8 == 12 and q.matmuls_fp32 == 5  # 2 layers x 6; q.k, p.v, head
    c = q.calibration
    assert (c.source, c.texts, c.seed, c.method) == ("tiny calibration texts", 64, 0, "percentile")
    assert c.rows >= c.texts and c.tokens > c.rows  # every window of every drawn text
    for spec in tiny.manifest.tasks.values():
        assert spec.graphs["fp32"].quantization is None and spec.graphs["fp16"].quantization is None
    card = (tiny.bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "static int8, calibrated on 64 texts of tiny calibration texts" in card and "batch-dependent" in card


def test_cli_precision_syntax():
    from ropenlp.export import _parse_precisions

    assert _parse_precisions(["int8,fp32"], ["ner", "similarity"]) == ["int8", "fp32"]
    assert _parse_precisions(["ner=int8", "similarity=fp32"], ["ner", "similarity"]) == {
        "ner": ["int8"], "similarity": ["fp32"]}
    assert _parse_precisions(["ner=int8", "fp16"], ["ner", "similarity"]) == {
        "ner": ["int8"], "similarity": ["fp16"]}


def test_provenance_paths_are_relative_under_the_working_directory(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny.ner.parent)
    m = export_bundle(tmp_path / "b", ner=tiny.ner.relative_to(tiny.ner.parent), precisions=("fp32",))
    assert m.provenance.base_checkpoint == tiny.ner.name  # no machine layout in a shipped manifest


def test_the_checkpoints_normalisation_goes_into_the_manifest(tiny, tmp_path):
    """A checkpoint trained with ``ner.normalize`` records it in ropenlp.json; the bundle's manifest
    carries it, so serving normalises as training did (models.normalize)."""
    import shutil

    from export.onnx import export_bundle
    from models.bundle import load_manifest
    from models.normalize import Normalize
    from models.tasks import TASK_FILE, load_ner

    ckpt = tmp_path / "ner"
    shutil.copytree(tiny.ner, ckpt)
    cfg = json.loads((ckpt / TASK_FILE).read_text(encoding="utf-8"))
    (ckpt / TASK_FILE).write_text(json.dumps(cfg | {"normalize": "width,t2s"}), encoding="utf-8")
    assert load_ner(ckpt).cfg.normalize == "width,t2s"
    export_bundle(tmp_path / "bundle", ner=ckpt, precisions=("fp32",), name="normalised")
    assert load_manifest(tmp_path / "bundle").normalize == Normalize(width=True, t2s=True)
    assert load_manifest(tiny.bundle).normalize == Normalize()  # nothing recorded: none
