"""``ropenlp export`` on real files (typer's CliRunner on the real app)."""

from __future__ import annotations

import json
from pathlib import Path

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
    import shutil

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
