"""bench/common's random models: ``--random --like BUNDLE`` copies the bundle's task settings."""

from pathlib import Path

from bench.common import random_checkpoint
from models.bundle import load_manifest
from models.tasks import load_ner, load_similarity

DEFAULT = Path(__file__).resolve().parents[1] / "service" / "bundles" / "default"


def test_a_random_model_like_the_shipped_bundle(tmp_path):
    m = load_manifest(DEFAULT)
    ner = load_ner(random_checkpoint("ner", tmp_path / "ner", layers=1, hidden=32, like=DEFAULT))
    assert ner.cfg.head == m.tasks["ner"].head == "gp"
    assert ner.cfg.labels == tuple(m.tasks["ner"].labels) and len(ner.cfg.labels) == 10
    assert (ner.cfg.max_length, ner.cfg.stride, ner.cfg.decode) == (m.tasks["ner"].max_length, m.tasks["ner"].stride, m.tasks["ner"].decode)
    assert ner.encoder.cfg.num_hidden_layers == 1 and ner.encoder.cfg.hidden_size == 32  # the size is ours
    sim = load_similarity(random_checkpoint("similarity", tmp_path / "sim", layers=1, hidden=32, like=DEFAULT))
    assert sim.pooling.mode == m.tasks["similarity"].pooling == "first-last-avg"


def test_a_random_model_without_like_keeps_its_own_settings(tmp_path):
    ner = load_ner(random_checkpoint("ner", tmp_path / "ner", layers=1, hidden=32))
    assert ner.cfg.head == "egp" and len(ner.cfg.labels) == 8 and ner.cfg.max_length == 256


def test_ort_ops_splits_a_call_of_the_shipped_graph_by_operator(tmp_path):
    """bench/ort_ops.py on the shipped bundle: every operator type's share of the kernel time, summing to 1."""
    import json

    from bench.ort_ops import main

    out = tmp_path / "ops.json"
    assert main(["--bundle", str(DEFAULT), "--batch", "2", "--warmup", "1", "--runs", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["graph"] == "ner.int8.onnx" and r["batch"][0] == 2 and r["median_call_ms"] > 0
    assert abs(sum(r["op_share"].values()) - 1) < 1e-6
    assert "MatMulIntegerToFloat" in r["op_share"]  # the static int8 products fused at load
