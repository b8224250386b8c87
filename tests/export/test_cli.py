"""``ropenlp export`` on real files (typer's CliRunner on the real app)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from models.bundle import load_manifest
from ropenlp.cli import app
from tests.export.conftest import calibration_texts


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


def output(result) -> str:
    try:
        return result.output + (result.stderr or "")
    except ValueError:  # older click: stderr not captured separately
        return result.output


def test_export_similarity_int8_only_with_sample_file(tiny, tmp_path, runner):
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in ["我爱北京", "上海的人", "好"]),
                      encoding="utf-8")
    out = tmp_path / "bundle"
    pairs = tmp_path / "train.tsv"  # the similarity training data's format: both sentences calibrate
    pairs.write_text("".join(f"{a}\t{b}\t1\n" for a, b in zip(calibration_texts(), calibration_texts()[1:])),
                     encoding="utf-8")
    result = runner.invoke(app, ["export", "--model", str(tiny.sim), "--out", str(out), "--precision", "int8",
                                 "--sample-file", str(sample), "--name", "sim-int8", "--data", "toy=CC0-1.0",
                                 "--calibration-data", str(pairs), "--calibration-size", "40"])
    assert result.exit_code == 0, output(result)
    m = load_manifest(out)
    assert m.name == "sim-int8" and "ner" not in m.tasks and list(m.tasks["similarity"].graphs) == ["int8"]
    assert m.tasks["similarity"].graphs["int8"].parity["texts"] == 3
    assert [(d.name, d.terms) for d in m.provenance.training_data] == [("toy", "CC0-1.0")]
    assert not (out / "sim.fp32.onnx").exists()  # built as the reference, not shipped
    assert "similarity int8: sim.int8.onnx" in result.output and "static int8, batch dependence" in result.output
    c = m.tasks["similarity"].graphs["int8"].quantization.calibration
    assert (c.source, c.texts, c.seed) == (str(pairs), 40, 0)


def test_static_int8_without_calibration_data_fails_naming_the_option(tiny, tmp_path, runner):
    result = runner.invoke(app, ["export", "-m", str(tiny.ner), "-o", str(tmp_path / "o"), "-p", "int8"])
    assert result.exit_code == 1 and "Traceback" not in output(result)
    assert "needs calibration texts" in output(result) and "--calibration-data ner=FILE" in output(result)
    assert not (tmp_path / "o").exists()


def test_calibration_falls_back_to_the_training_data_the_run_recorded(tiny, tmp_path, runner):
    """A checkpoint in a training run's folder (runs/X/best) calibrates on the files of its config.resolved.toml,
    read with the NER readers (CLUENER JSON lines here)."""
    run = tmp_path / "runs" / "ner_tiny"
    shutil.copytree(tiny.ner, run / "best")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.json").write_text("".join(json.dumps({"text": t, "label": {}}, ensure_ascii=False) + "\n"
                                             for t in calibration_texts()), encoding="utf-8")
    (run / "config.resolved.toml").write_text(f'[data]\nroot = "{data}"\ntrain = ["train.json"]\nformat = "cluener"\n',
                                              encoding="utf-8")
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "-m", str(run / "best"), "-o", str(out), "-p", "int8", "--calibration-size", "30",
                                 "--calibration-seed", "7"])
    assert result.exit_code == 0, output(result)
    c = load_manifest(out).tasks["ner"].graphs["int8"].quantization.calibration
    assert c.source.startswith(str(data / "train.json")) and "config.resolved.toml" in c.source
    assert (c.texts, c.seed) == (30, 7)
    (run / "config.resolved.toml").write_text('[data]\nroot = "/nowhere"\ntrain = ["train.json"]\n', encoding="utf-8")
    result = runner.invoke(app, ["export", "-m", str(run / "best"), "-o", str(tmp_path / "b2"), "-p", "int8"])
    assert result.exit_code == 1 and "those files are not here: pass --calibration-data" in output(result)


def test_export_both_tasks_detected_from_checkpoints(tiny, tmp_path, runner):
    out = tmp_path / "both"
    result = runner.invoke(app, ["export", "-m", str(tiny.sim), "-m", str(tiny.ner), "-o", str(out)])
    assert result.exit_code == 0, output(result)
    m = load_manifest(out)
    assert list(m.tasks["ner"].graphs) == list(m.tasks["similarity"].graphs) == ["fp32"]


def test_non_checkpoint_directory_exits_non_zero(tmp_path, runner):
    (tmp_path / "notes.txt").write_text("not a model", encoding="utf-8")
    result = runner.invoke(app, ["export", "--model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "not a ropenlp task checkpoint" in output(result)
    assert "Traceback" not in output(result)
    assert not (tmp_path / "out").exists()


def test_two_checkpoints_of_one_task_rejected(tiny, tmp_path, runner):
    result = runner.invoke(app, ["export", "-m", str(tiny.ner), "-m", str(tiny.ner), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "at most one model per task" in output(result)


def test_bad_precision_exits_non_zero(tiny, tmp_path, runner):
    result = runner.invoke(app, ["export", "-m", str(tiny.ner), "-o", str(tmp_path / "o"), "-p", "fp32,int4"])
    assert result.exit_code == 1
    assert "int4" in output(result)


def test_cli_module_imports_no_heavy_packages():
    import subprocess
    import sys

    code = "import sys, ropenlp.export; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout
    assert out.strip() == "[]"


def _retrained_sim(tiny, root):
    """A second similarity checkpoint on the tiny vocabulary: tiny.sim with its encoder weights moved."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny.sim, root)
    weights = load_file(str(root / "model.safetensors"))
    save_file({k: v + 0.05 if v.is_floating_point() else v for k, v in weights.items()}, str(root / "model.safetensors"))
    return root


def test_base_replaces_one_task_and_keeps_the_others_as_they_were(tiny, tmp_path, runner):
    """--base: the similarity model of a bundle replaced in place; the NER graphs, settings and metrics of
    the bundle are kept byte for byte, the manifest verifies, both tasks run."""
    from models.bundle import sha256
    from tests.export.conftest import session

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny.bundle, bundle)
    sim = _retrained_sim(tiny, tmp_path / "sim2")
    result = runner.invoke(app, ["export", "-m", str(sim), "-o", str(bundle), "--base", str(bundle), "--overwrite",
                                 "-p", "fp32", "--data", "more=CC0-1.0", "--notes", "new sim"])
    assert result.exit_code == 0, output(result)
    m, old = load_manifest(bundle), tiny.manifest
    assert list(m.tasks) == ["ner", "similarity"] and m.name == "tiny" and m.normalize == old.normalize
    assert m.tasks["ner"] == old.tasks["ner"]
    for g in old.tasks["ner"].graphs.values():
        assert sha256(bundle / g.file) == sha256(tiny.bundle / g.file)
    assert list(m.tasks["similarity"].graphs) == ["fp32"]
    assert sha256(bundle / "sim.fp32.onnx") != sha256(tiny.bundle / "sim.fp32.onnx")
    assert sorted(p.name for p in bundle.iterdir()) == sorted({"bundle.json", "MODEL_CARD.md", *m.referenced_files()})
    assert old.provenance.base_checkpoint == f"ner: {tiny.ner}; similarity: {tiny.sim}"
    assert m.provenance.base_checkpoint == f"ner: {tiny.ner}; similarity: {sim}"  # the kept task's source stays
    assert [d.name for d in m.provenance.training_data] == ["tiny-random", "more"]
    assert m.provenance.notes.startswith("test fixture; new sim; similarity replaced by ropenlp export --base")
    tok = tiny.tokenizer
    ids = np.array([tok.encode("我爱北京").ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    (scores,) = session(bundle / "ner.int8.onnx").run(None, feeds)
    (reference,) = session(tiny.bundle / "ner.int8.onnx").run(None, feeds)
    np.testing.assert_array_equal(scores, reference)
    (vec,) = session(bundle / "sim.fp32.onnx").run(None, feeds)
    (before,) = session(tiny.bundle / "sim.fp32.onnx").run(None, feeds)
    assert vec.shape == before.shape and not np.allclose(vec, before)
    # replaced again, as a shipped bundle's similarity is stage after stage: every note is said once
    again = runner.invoke(app, ["export", "-m", str(sim), "-o", str(bundle), "--base", str(bundle), "--overwrite",
                                "-p", "fp32", "--data", "more=CC0-1.0", "--notes", "new sim"])
    assert again.exit_code == 0, output(again)
    assert load_manifest(bundle).provenance.notes == m.provenance.notes
    assert m.provenance.notes.count("replaced by ropenlp export --base") == 1


def test_base_refuses_another_tokenizer_normalisation_or_a_non_bundle(tiny, tmp_path, runner):
    from models.tasks import TASK_FILE

    other = _retrained_sim(tiny, tmp_path / "vocab")
    with open(other / "vocab.txt", "a", encoding="utf-8") as f:
        f.write("新词\n")
    base = ["--base", str(tiny.bundle), "-p", "fp32"]
    result = runner.invoke(app, ["export", "-m", str(other), "-o", str(tmp_path / "a"), *base])
    assert result.exit_code == 1 and "its tokenizer differs" in output(result) and "different vocabularies" in output(result)
    normalised = _retrained_sim(tiny, tmp_path / "norm")
    cfg = json.loads((normalised / TASK_FILE).read_text(encoding="utf-8"))
    (normalised / TASK_FILE).write_text(json.dumps(cfg | {"normalize": "t2s"}), encoding="utf-8")
    result = runner.invoke(app, ["export", "-m", str(normalised), "-o", str(tmp_path / "b"), *base])
    assert result.exit_code == 1 and "one bundle normalises one way" in output(result)
    result = runner.invoke(app, ["export", "-m", str(tiny.sim), "-o", str(tmp_path / "c"), "--base", str(tmp_path)])
    assert result.exit_code == 1 and "not a bundle that loads" in output(result)
    assert not any((tmp_path / d).exists() for d in "abc")
