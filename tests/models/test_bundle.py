"""Bundle manifest: write -> load round trip, and every corruption named."""

import json
import typing

import pytest

from models.bundle import (
    FORMAT_VERSION,
    BundleError,
    GraphSpec,
    Manifest,
    NerTask,
    SimilarityTask,
    check_graph_io,
    load_manifest,
    write_manifest,
)
from models.spans import DECODES


def graph(file, precision="fp32", outputs=("scores",)):
    return GraphSpec(file=file, precision=precision, opset=17, inputs=["input_ids", "attention_mask"],
                     outputs=list(outputs))


@pytest.fixture
def bundle(tmp_path):
    for name, data in {"tokenizer.json": b"{}", "ner.fp32.onnx": b"graph-a", "ner.int8.onnx": b"graph-b",
                       "sim.fp32.onnx": b"graph-c"}.items():
        (tmp_path / name).write_bytes(data)
    manifest = Manifest(
        format_version=FORMAT_VERSION, name="t",
        ner=NerTask(graphs={"fp32": graph("ner.fp32.onnx"), "int8": graph("ner.int8.onnx", "int8")},
                    max_length=16, stride=8, labels=["LOC"], head="egp"),
        similarity=SimilarityTask(graphs={"fp32": graph("sim.fp32.onnx", outputs=("sentence_embedding",))},
                                  max_length=16, pooling="cls", dim=8, whitening=True),
    )
    write_manifest(tmp_path, manifest)
    return tmp_path


def test_round_trip_and_variant_choice(bundle):
    m = load_manifest(bundle)
    assert set(m.files) == {"tokenizer.json", "ner.fp32.onnx", "ner.int8.onnx", "sim.fp32.onnx"}
    assert m.tasks["ner"].pick("cpu").precision == "int8"
    assert m.tasks["ner"].pick("cuda").precision == "fp32"  # no fp16 variant: fp32 is next best on GPU
    assert m.tasks["ner"].pick("cpu", "fp32").file == "ner.fp32.onnx"
    with pytest.raises(BundleError, match="no fp16 graph"):
        m.tasks["ner"].pick("cuda", "fp16")


def test_missing_file(bundle):
    (bundle / "ner.int8.onnx").unlink()
    with pytest.raises(BundleError, match="ner.int8.onnx .*missing"):
        load_manifest(bundle)


def test_missing_manifest_and_dir(bundle, tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    (bundle / "bundle.json").unlink()
    with pytest.raises(BundleError, match="bundle.json is missing"):
        load_manifest(bundle)


def test_bad_json(bundle):
    (bundle / "bundle.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(bundle)


def test_wrong_version(bundle):
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["format_version"] = 99
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format_version 99 is not supported"):
        load_manifest(bundle)


def test_schema_error_names_the_field(bundle):
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["tasks"]["ner"]["stride"] = 100
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="ner: .*stride 100 exceeds"):
        load_manifest(bundle)


def test_decode_is_optional_and_checked(bundle):
    path = bundle / "bundle.json"
    raw = json.loads(path.read_text())
    assert raw["tasks"]["ner"]["decode"] == "nested" and load_manifest(bundle).tasks["ner"].decode == "nested"
    del raw["tasks"]["ner"]["decode"]  # a manifest written before the field existed: nested
    path.write_text(json.dumps(raw))
    assert load_manifest(bundle).tasks["ner"].decode == "nested"
    raw["tasks"]["ner"]["decode"] = "flat"
    path.write_text(json.dumps(raw))
    assert load_manifest(bundle).tasks["ner"].decode == "flat"
    raw["tasks"]["ner"]["decode"] = "bogus"
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="ner.decode: Input should be 'nested' or 'flat'"):
        load_manifest(bundle)
    assert typing.get_args(NerTask.model_fields["decode"].annotation) == DECODES  # bundle.py stays numpy-free


def test_hash_mismatch(bundle):
    (bundle / "sim.fp32.onnx").write_bytes(b"graph-X")
    with pytest.raises(BundleError, match="sim.fp32.onnx: SHA-256 mismatch"):
        load_manifest(bundle)
    load_manifest(bundle, verify_hashes=False)  # opt-out for trusted, read-only mounts


def test_graph_io_names(bundle):
    g = load_manifest(bundle).tasks["ner"].graphs["fp32"]
    check_graph_io(g, inputs=["attention_mask", "input_ids"], outputs=["scores"])
    with pytest.raises(BundleError, match="graph inputs .*token_type_ids"):
        check_graph_io(g, inputs=["input_ids", "attention_mask", "token_type_ids"], outputs=["scores"])


def test_format_1_still_reads(bundle):
    """Version 1 held each task under a top-level key of its name, without a kind: read as version 3. Its int8
    graphs (all dynamic before format 3) are read as int8-dynamic, the same file."""
    path = bundle / "bundle.json"
    raw = json.loads(path.read_text())
    assert raw["format_version"] == FORMAT_VERSION == 3 and set(raw["tasks"]) == {"ner", "similarity"}
    v1 = {k: v for k, v in raw.items() if k != "tasks"} | {"format_version": 1}
    for name, spec in raw["tasks"].items():
        v1[name] = {k: v for k, v in spec.items() if k != "kind"}
    path.write_text(json.dumps(v1))
    m = load_manifest(bundle)
    assert m.format_version == 1 and m.tasks["similarity"] == Manifest.model_validate(raw).tasks["similarity"]
    assert isinstance(m.tasks["ner"], NerTask) and isinstance(m.tasks["similarity"], SimilarityTask)
    assert list(m.tasks["ner"].graphs) == ["fp32", "int8-dynamic"]
    g = m.tasks["ner"].graphs["int8-dynamic"]
    assert (g.file, g.precision, g.quantization) == ("ner.int8.onnx", "int8-dynamic", None)
    assert m.tasks["ner"].pick("cpu").precision == "fp32"  # batch invariance first: dynamic int8 only if asked
    assert m.tasks["ner"].pick("cpu", "int8-dynamic").file == "ner.int8.onnx"


def test_format_2_int8_is_dynamic_and_format_3_keeps_its_quantization(bundle):
    from models.bundle import Calibration, Quantization

    path = bundle / "bundle.json"
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(raw | {"format_version": 2}))
    assert set(load_manifest(bundle).tasks["ner"].graphs) == {"fp32", "int8-dynamic"}
    q = Quantization(mode="static", batch_invariant=True, batch_dependence=0.0, format="qdq",
                     activations="uint8 per-tensor, calibrated", weights="int8 per-channel", matmuls_int8=24,
                     matmuls_fp32=9, calibration=Calibration(source="cluener/train.json", texts=256, seed=0, rows=260,
                                                             tokens=9000, method="minmax"))
    raw["tasks"]["ner"]["graphs"]["int8"]["quantization"] = q.model_dump(mode="json")
    path.write_text(json.dumps(raw))
    m = load_manifest(bundle)
    assert m.tasks["ner"].graphs["int8"].quantization == q and m.tasks["ner"].pick("cpu").precision == "int8"
    raw["tasks"]["ner"]["graphs"]["int8"]["quantization"]["mode"] = "sometimes"
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"tasks\.ner\.graphs\.int8\.quantization\.mode"):
        load_manifest(bundle)


def test_tasks_are_a_union_discriminated_by_kind(bundle):
    raw = json.loads((bundle / "bundle.json").read_text())
    raw["tasks"]["ner"]["kind"] = "bogus"
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="tasks.ner: .*'bogus'"):
        load_manifest(bundle)
    raw["tasks"]["ner"]["kind"] = "similarity"  # a spec must be named after its kind
    (bundle / "bundle.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="tasks.ner"):
        load_manifest(bundle)
