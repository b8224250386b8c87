"""``ropenlp export`` on real files (typer's CliRunner on the real app)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.bundle import load_manifest
from ropenlp.cli import app


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
    result = runner.invoke(app, ["export", "--model", str(tiny.sim), "--out", str(out), "--precision", "int8",
                                 "--sample-file", str(sample), "--name", "sim-int8", "--data", "toy=CC0-1.0"])
    assert result.exit_code == 0, output(result)
    m = load_manifest(out)
    assert m.name == "sim-int8" and "ner" not in m.tasks and list(m.tasks["similarity"].graphs) == ["int8"]
    assert m.tasks["similarity"].graphs["int8"].parity["texts"] == 3
    assert [(d.name, d.terms) for d in m.provenance.training_data] == [("toy", "CC0-1.0")]
    assert not (out / "sim.fp32.onnx").exists()  # built as the reference, not shipped
    assert "similarity int8: sim.int8.onnx" in result.output


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

    code = "import sys, export.cli; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo).stdout
    assert out.strip() == "[]"
