"""bench/peers.py and bench/peers_http.py without the peers' venvs: arguments, report maths, request groups and
the worker's JSON-lines protocol (with a stand-in backend)."""

import io
import json
import os

import numpy as np
import pytest

from bench import peers, peers_http


def test_default_variants_follow_the_tasks():
    args = peers.parse_args([])
    assert args.variants == [
        "ropenlp-fp32",
        "ropenlp-int8",
        "st-torch",
        "st-onnx-int8",
        "hf-ner-torch",
        "optimum-ner-int8",
    ]
    assert (args.batch_sizes, args.threads, args.tasks) == ([1, 32], [2, 1], ["embed", "ner"])
    assert peers.parse_args(["--tasks", "ner"]).variants == list(peers.DEFAULT_VARIANTS["ner"])
    # every backend the driver can name has a venv and tasks (one table each side)
    assert set(peers.VENV) == set(peers.TASKS_OF) == set(peers.peer.BACKENDS)


@pytest.mark.parametrize(
    "argv", [["--variants", "st-torch,nope"], ["--tasks", "pos"], ["--calls-per-turn", "0"]]
)
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        peers.parse_args(argv)


def test_ratios_are_ours_over_each_other_variant():
    r = peers.ratios({"ropenlp-fp32": 100.0, "ropenlp-int8": 300.0, "st-onnx-int8": 200.0, "broken": 0.0})
    assert r == {
        "ropenlp-fp32/ropenlp-int8": pytest.approx(1 / 3),
        "ropenlp-fp32/st-onnx-int8": 0.5,
        "ropenlp-int8/ropenlp-fp32": 3.0,
        "ropenlp-int8/st-onnx-int8": 1.5,
    }
    assert peers.ratios({"ropenlp": 130.0, "infinity": 100.0}, ours=("ropenlp",)) == {"ropenlp/infinity": 1.3}


def test_rows_and_targets():
    row = peers.variant_row([0.010, 0.020, 0.030], 32)
    assert (
        row["texts_per_s"] == pytest.approx(32 / 0.020)
        and row["n"] == 3
        and row["p50_ms"] == pytest.approx(20)
    )
    rates = {"ropenlp-int8": 150.0, "st-onnx-int8": 100.0}
    group = {"task": "embed", "threads": 2, "cells": [{"batch_size": 1, "ratios": peers.ratios(rates)}]}
    [t] = peers.targets([group, {"task": "ner", "threads": 2, "cells": []}])
    assert (t["ratio"], t["target"], t["ours"], t["peer"]) == (1.5, 1.5, "ropenlp-int8", "st-onnx-int8")


def test_reversal_flags_a_model_blind_to_word_order():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 8))
    blind = np.repeat(a, 2, axis=0)  # each sentence and its reversal: the same vector
    assert peers.reversal(blind)["order_blind"] and peers.reversal(blind)["cosine_min"] == pytest.approx(1.0)
    seeing = blind + rng.normal(scale=0.3, size=blind.shape)
    r = peers.reversal(seeing)
    assert not r["order_blind"] and r["sentences"] == 3 and r["cosine_mean"] < 1.0


def test_http_groups_are_the_same_for_both_servers():
    texts = [f"t{i}" for i in range(10)]
    gs = peers_http.groups(texts, count=50, low=1, high=8, seed=0)
    assert gs == peers_http.groups(texts, count=50, low=1, high=8, seed=0)
    assert all(1 <= len(g) <= 8 for g in gs) and len({len(g) for g in gs}) > 1
    assert gs[1][0] == texts[len(gs[0]) % 10]  # consecutive, cycling
    ours, theirs = peers_http.payloads("ropenlp", gs), peers_http.payloads("infinity", gs)
    assert [p.items for p in ours] == [p.items for p in theirs] == [len(g) for g in gs]
    assert json.loads(ours[0].body) == {"texts": gs[0]}
    assert json.loads(theirs[0].body) == {"model": peers_http.SERVED, "input": gs[0]}


def test_http_arguments():
    a = peers_http.parse_args(
        ["--texts-per-request", "2-4", "--concurrency", "8,32", "--", "--max-wait-ms", "2"]
    )
    assert (a.low, a.high, a.concurrency, a.extra) == (2, 4, [8, 32], ["--max-wait-ms", "2"])
    assert (peers_http.parse_args([]).low, peers_http.parse_args([]).high) == (1, 8)
    with pytest.raises(SystemExit):
        peers_http.parse_args(["--texts-per-request", "5-2"])


def test_the_worker_times_calls_on_the_texts_it_was_given(monkeypatch, tmp_path):
    seen = []

    def load(models, threads, texts, task):
        return (lambda batch: seen.append(list(batch)) or [[1.0, 0.0] for _ in batch]), {"threads": threads}

    monkeypatch.setitem(peers.peer.BACKENDS, "fake", (("embed",), load))
    texts = ["a", "b", "c"]
    lines = [
        {
            "op": "load",
            "backend": "fake",
            "task": "embed",
            "models": str(tmp_path),
            "threads": 1,
            "texts": texts,
        },
        {"op": "time", "size": 2, "start": 1, "calls": 2},
        {"op": "run", "task": "embed", "texts": ["x"]},
        {
            "op": "load",
            "backend": "fake",
            "task": "ner",
            "models": str(tmp_path),
            "threads": 1,
            "texts": texts,
        },
        {"op": "quit"},
    ]
    r, w = os.pipe()
    peers.peer.worker(io.StringIO("".join(json.dumps(m) + "\n" for m in lines)), out_fd=w)
    with os.fdopen(r, encoding="utf-8") as f:
        replies = [json.loads(line) for line in f]
    assert replies[0]["info"]["threads"] == 1
    assert len(replies[1]["seconds"]) == 2 and seen[:2] == [["c", "a"], ["b", "c"]]  # bench.common.chunk
    assert replies[2] == {"vectors": [[1.0, 0.0]]}
    assert "does not do ner" in replies[3]["error"]
