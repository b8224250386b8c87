"""Similarity training (CoSENT + contrastive, mixed label scales), whitening fit, evaluate sim CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.tasks import load_similarity, read_task
from models.text import Tokenizer
from ropenlp.cli import app
from training.similarity import PairCollator, PairExample, load_sim_config, sentence_ids, train_sim

from .synthetic import TINY_ENCODER, write_pairs


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    write_pairs(d / "sts_train.tsv", 240, seed=1, scale=5)
    write_pairs(d / "para_train.tsv", 120, seed=2, scale=1)
    write_pairs(d / "sts_dev.tsv", 60, seed=3, scale=5)
    (d / "sentences.txt").write_text("".join(f"{line.split(chr(9))[0]}\n" for line in
                                             (d / "sts_train.tsv").read_text(encoding="utf-8").splitlines()),
                                     encoding="utf-8")
    return d


def tiny_config(data_dir, out_dir, vocab, **overrides):
    base = TINY_ENCODER | {
        "data.root": str(data_dir), "data.max_length": 12, "vocab.path": str(vocab), "model.pooling": "mean",
        "data.train": [{"paths": ["sts_train.tsv"]}, {"paths": ["para_train.tsv"]}],
        "data.dev": [{"paths": ["sts_dev.tsv"], "name": "sts"}],
        "sim.contrastive_weight": 0.5, "sim.eval_every_epoch": False,
        "training.lr": 3e-3, "training.batch_size": 32, "training.max_steps": 40, "training.warmup_steps": 3,
        "training.eval_every": 20, "training.checkpoint_every": 40, "training.progress": "off",
        "training.threads": 1, "output.dir": str(out_dir)}
    return load_sim_config(None, base | overrides)


@pytest.fixture(scope="module")
def trained(pair_data, tiny_vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sim"
    result = train_sim(tiny_config(pair_data, out, tiny_vocab))
    return out, result


def test_sentences_are_cut_like_the_service(tiny_vocab):
    tok = Tokenizer.from_vocab(tiny_vocab)
    ids, cut = sentence_ids(tok, ["北京", "北京上海天安门广场大学"], 6)
    assert cut == 1 and len(ids[1]) == 6 and ids[1][-1] == tok.sep_id and ids[1][0] == tok.cls_id
    batch = PairCollator(tok.pad_id)([PairExample(ids[0], ids[1], 3.0, 0, False)])
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].tolist() == [3.0]


def test_train_sim_learns_and_keeps_the_best(trained):
    out, result = trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    evals = [r["eval"] for r in log if "eval" in r]
    assert [set(e) for e in evals] == [{"spearman", "spearman/sts", "spearman_mean"}] * 2
    assert evals[-1]["spearman"] > 30  # char overlap is easy to learn
    assert read_task(out / "best") == {"task": "similarity", "pooling": "mean", "max_length": 12}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["para_train.tsv"]["max_label"] == 1.0
    assert metrics["data"]["train"]["sts_train.tsv"]["max_label"] == 5.0
    assert result.best == pytest.approx(max(e["spearman"] for e in evals))


def test_training_on_a_dev_file_is_refused(pair_data, tiny_vocab, tmp_path):
    cfg = tiny_config(pair_data, tmp_path / "x", tiny_vocab, **{"data.dev": [{"paths": ["para_train.tsv"]}]})
    with pytest.raises(ValueError, match="listed for training and for dev"):
        train_sim(cfg)


def test_whitening_command_stores_k(trained, pair_data, tmp_path):
    out, _ = trained
    target = tmp_path / "whitened"
    res = CliRunner().invoke(app, ["train", "whitening", "--model", str(out / "best"),
                                   "--sentences", str(pair_data / "sentences.txt"),
                                   "--sentences", str(pair_data / "para_train.tsv"),
                                   "--eval", str(pair_data / "sts_dev.tsv"), "--k", "4,8,16",
                                   "--out", str(target), "--metrics", str(tmp_path / "w.json")])
    assert res.exit_code == 0, res.output
    w = json.loads((target / "metrics.json").read_text())["whitening"]
    assert w == json.loads((tmp_path / "w.json").read_text())
    assert w["sentences"] == 240 + 2 * 120 and w["jl_dimension"] == 32  # min(floor(8.33 ln 480) + 1, 32)
    assert set(w["mean_spearman"]) == {"none", "k=4", "k=8", "k=16", "k=32"}
    assert w["k"] == max([4, 8, 16, 32], key=lambda k: (w["mean_spearman"][f"k={k}"], -k))
    assert "dev" in json.loads((target / "metrics.json").read_text())  # the training metrics are kept
    model = load_similarity(target).eval()
    assert model.dim == w["k"]
    tok = Tokenizer.load(target)
    ids = torch.from_numpy(tok.encode("北京大学").ids.copy())[None]
    with torch.no_grad():
        vec, _ = model(ids, torch.ones_like(ids))
    assert vec.shape == (1, w["k"]) and torch.linalg.norm(vec, dim=-1).item() == pytest.approx(1.0, abs=1e-5)
    # --choose overrides the dev choice
    res = CliRunner().invoke(app, ["train", "whitening", "--model", str(target), "--sentences",
                                   str(pair_data / "sentences.txt"), "--choose", "5"])
    assert res.exit_code == 0, res.output
    assert load_similarity(target).dim == 5


def test_evaluate_sim_cli(trained, pair_data, tmp_path):
    out, _ = trained
    target = tmp_path / "sim.json"
    res = CliRunner().invoke(app, ["evaluate", "sim", "--model", str(out / "best"), "--data",
                                   str(pair_data / "sts_dev.tsv"), "--data", str(pair_data / "para_train.tsv"),
                                   "--out", str(target)])
    assert res.exit_code == 0, res.output
    m = json.loads(target.read_text())
    recorded = json.loads((out / "best" / "metrics.json").read_text())["dev"]["sts"]["spearman"]
    assert m["files"][str(pair_data / "sts_dev.tsv")]["spearman"] == pytest.approx(recorded, abs=1e-9)
    assert "mean" in res.output and m["task"] == "similarity"
