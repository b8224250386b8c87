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


def test_a_similarity_average_loads_and_has_no_threshold_to_calibrate(trained, tmp_path):
    """Two checkpoints of one run (the best of step 20 or 40, and the last) average like seeds do."""
    from safetensors.torch import load_file

    from training.average import average_checkpoints

    out, _ = trained
    sources = [out / "best", out / "model"]
    record = average_checkpoints(sources, tmp_path / "avg")
    assert list(record) == ["averaged_from"] and list(record["averaged_from"]) == [str(p) for p in sources]
    best_dev = json.loads((out / "best" / "metrics.json").read_text())["dev_spearman"]
    assert record["averaged_from"][str(out / "best")] == {"dev_spearman": best_dev}
    x, y, m = (load_file(str(p / "model.safetensors")) for p in (*sources, tmp_path / "avg"))
    assert all(torch.allclose(m[k], (x[k].double() + y[k].double()).div(2).float(), atol=0, rtol=0) for k in m)
    model = load_similarity(tmp_path / "avg")
    assert model.cfg.pooling == "mean" and read_task(tmp_path / "avg") == read_task(out / "best")
    with pytest.raises(ValueError, match="a similarity average has none to calibrate"):
        average_checkpoints(sources, tmp_path / "avg2", dev=["dev.tsv"], threshold_grid=(0.0,))
    assert not (tmp_path / "avg2").exists()


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


def write_nli(path, n_premises: int, seed: int) -> None:
    """NLI-like rows: per premise an entailment (the premise minus a character), a neutral and a
    contradiction (other characters); some premises lack the contradiction."""
    import random

    from .synthetic import SIM_CHARS

    rng = random.Random(seed)
    lines = []
    for i in range(n_premises):
        a = rng.sample(SIM_CHARS, 5)
        rest = [c for c in SIM_CHARS if c not in a]
        lines.append(f"{''.join(a)}\t{''.join(a[:4])}\tentailment\n")
        lines.append(f"{''.join(a)}\t{''.join(a[:2] + rest[:2])}\tneutral\n")
        if i % 4:
            lines.append(f"{''.join(a)}\t{''.join(rng.sample(rest, 4))}\tcontradiction\n")
    path.write_text("".join(lines), encoding="utf-8")


NLI_LABELS = {"entailment": 2, "neutral": 1, "contradiction": 0}


def mixture_config(pair_data, out, vocab, **overrides):
    write_nli(pair_data / "nli_train.tsv", 40, seed=4)
    return tiny_config(pair_data, out, vocab, **{
        "data.train": [{"paths": ["sts_train.tsv"], "name": "sts", "weight": 2.0},
                       {"paths": ["para_train.tsv"], "name": "para", "objective": "cosent"},
                       {"paths": ["nli_train.tsv"], "name": "nli", "labels": NLI_LABELS}],
        "data.dedupe": True, "sim.objective": "simcse", "sim.contrastive_weight": 0.0, "training.max_steps": 12,
        "training.eval_every": 6, "training.checkpoint_every": 6, "sim.eval_sample": 25} | overrides)


def test_mixture_draws_each_batch_from_one_set_and_resumes_exactly(tiny_vocab):
    from training.batches import EpochBatches
    from training.similarity import MixtureBatches

    tok = Tokenizer.from_vocab(tiny_vocab)
    ids, _ = sentence_ids(tok, ["北京", "上海大学"], 8)

    def make():
        sets = {name: EpochBatches([PairExample(ids[0], ids[1], float(k), g, False) for k in range(n)],
                                   collate=PairCollator(tok.pad_id), batch_size=4, seed=g)
                for g, (name, n) in enumerate([("a", 40), ("b", 8), ("c", 12)])}
        return MixtureBatches(sets, [3.0, 1.0, 0.0], seed=7)

    mix = make()
    assert mix.steps_per_epoch == 10 + 2  # c has probability 0
    drawn = [next(mix) for _ in range(30)]
    assert all(len(set(b["groups"].tolist())) == 1 for b in drawn)  # one set per batch
    sets = [b["groups"][0].item() for b in drawn]
    assert sets == [mix.choice(t) for t in range(30)] and 2 not in sets
    assert 15 <= sets.count(0) <= 29 and mix.epoch == pytest.approx(30 / 12)
    again = make()
    for _ in range(11):
        next(again)
    state = again.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    for want in drawn[11:]:
        got = next(resumed)
        assert torch.equal(got["labels"], want["labels"]) and torch.equal(got["groups"], want["groups"])


def test_a_single_set_batches_as_before(tiny_vocab):
    from training.batches import EpochBatches
    from training.similarity import MixtureBatches

    tok = Tokenizer.from_vocab(tiny_vocab)
    ids, _ = sentence_ids(tok, ["北京"], 8)
    examples = [PairExample(ids[0], ids[0], float(k), 0, False) for k in range(10)]
    old = EpochBatches(examples, collate=PairCollator(tok.pad_id), batch_size=3, seed=5)
    new = MixtureBatches({"x": EpochBatches(examples, collate=PairCollator(tok.pad_id), batch_size=3, seed=5)},
                         [1.0], seed=5)
    for _ in range(5):
        next(old)
    new.load_state_dict(old.state_dict())  # a checkpoint written before the mixture existed
    assert [next(new)["labels"].tolist() for _ in range(4)] == [next(old)["labels"].tolist() for _ in range(4)]


def test_mixture_training_with_simcse_sets_and_sampled_dev(pair_data, tiny_vocab, tmp_path):
    out = tmp_path / "mix"
    train_sim(mixture_config(pair_data, out, tiny_vocab))
    metrics = json.loads((out / "metrics.json").read_text())
    data = metrics["data"]["train"]
    assert data["nli"]["objective"] == "simcse" and data["para"]["objective"] == "cosent"
    assert data["sts"]["objective"] == "simcse"  # no objective of its own: sim.objective
    assert (data["nli"]["pairs"], data["nli"]["triples"], data["nli"]["with_negative"]) == (110, 40, 30)
    assert sum(d["probability"] for d in data.values()) == pytest.approx(1.0)
    assert metrics["data"]["dev"] == {"sts": 60} and metrics["data"]["dev_during_training"] == {"sts": 25}
    evals = [json.loads(line)["eval"] for line in (out / "log.jsonl").read_text().splitlines() if "eval" in line]
    assert len(evals) == 2
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert best["dev"]["sts"]["pairs"] == 25 and best["dev_full"]["sts"]["pairs"] == 60
    assert metrics["best_dev_full"]["spearman"] == pytest.approx(best["dev_full_spearman"])


def test_dedupe_counts_in_the_metrics(pair_data, tiny_vocab, tmp_path):
    lines = (pair_data / "sts_train.tsv").read_text(encoding="utf-8").splitlines()
    dev_line = (pair_data / "sts_dev.tsv").read_text(encoding="utf-8").splitlines()[0]
    a, b, _ = dev_line.split("\t")
    (tmp_path / "copy.tsv").write_text("\n".join([f"{b}\t{a}\t1", *(f"{x} \t{y}\t{z}" for x, y, z in
                                                  (line.split("\t") for line in lines[:10])), "新\t句\t0"]) + "\n",
                                       encoding="utf-8")
    cfg = tiny_config(pair_data, tmp_path / "d", tiny_vocab, **{
        "data.train": [{"paths": ["sts_train.tsv"]}, {"paths": [str(tmp_path / "copy.tsv")], "name": "copy"}],
        "data.dedupe": True, "training.max_steps": 2, "training.eval_every": 0, "training.checkpoint_every": 0})
    train_sim(cfg)
    dedupe = json.loads((tmp_path / "d" / "metrics.json").read_text())["data"]["train"]["copy"]["dedupe"]
    assert (dedupe["read"], dedupe["kept"], dedupe["dropped"], dedupe["dropped_dev"]) == (12, 1, 10, 1)
    assert dedupe["dropped_by"] == {"dev": 1, "sts_train.tsv": 10}


def test_swap_negatives_are_added_to_the_cosent_sets_and_counted(pair_data, tiny_vocab, tmp_path):
    (tmp_path / "nouns.tsv").write_text("".join(f"问题{i}\t北京和上海的银行{i}\t{i % 2}\n" for i in range(40)),
                                        encoding="utf-8")
    cfg = tiny_config(pair_data, tmp_path / "d", tiny_vocab, **{
        "data.train": [{"paths": [str(tmp_path / "nouns.tsv")], "name": "nouns"}], "sim.swap_negatives": 1.0,
        "training.max_steps": 2, "training.eval_every": 0, "training.checkpoint_every": 0})
    train_sim(cfg)
    stats = json.loads((tmp_path / "d" / "metrics.json").read_text())["data"]["train"]["nouns"]
    assert stats["swap_negatives"] == 20 and stats["pairs"] == 60 and stats["positives"] == 20
    with pytest.raises(ValueError, match="swap_negatives"):
        tiny_config(pair_data, tmp_path / "e", tiny_vocab, **{"sim.swap_negatives": 1.5})


def test_resume_of_a_mixture_run_is_exact(pair_data, tiny_vocab, tmp_path, monkeypatch):
    from training.checkpoints import Checkpoints

    straight, split = tmp_path / "straight", tmp_path / "split"
    over = {"training.eval_every": 0, "training.checkpoint_every": 4, "training.precision": "fp32"}
    train_sim(mixture_config(pair_data, straight, tiny_vocab, **over))
    real = Checkpoints.save

    def save_then_stop(self, step, state, save_model=None):
        path = real(self, step, state, save_model)
        if step == 4:
            raise KeyboardInterrupt  # interrupted right after the checkpoint of step 4
        return path

    monkeypatch.setattr(Checkpoints, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_sim(mixture_config(pair_data, split, tiny_vocab, **over))
    monkeypatch.setattr(Checkpoints, "save", real)
    train_sim(mixture_config(pair_data, split, tiny_vocab, **over), resume=True)
    a, b = load_similarity(straight / "model").state_dict(), load_similarity(split / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_whitening_table_over_fit_sets_and_none_as_a_choice(trained, pair_data, tmp_path):
    from training.whitening import fit_whitening_run, sample_texts

    out, _ = trained
    (tmp_path / "general.txt").write_text("".join(f"{line}\n" for line in
                                                  ["北京大学", "上海银行", "天安门广场", "清华大学", "中国人民银行",
                                                   "张三去上海", "李四在北京", "人民广场", "中国公司", "大学"] * 5),
                                          encoding="utf-8")
    dev = [str(pair_data / "sts_dev.tsv"), str(pair_data / "para_train.tsv")]
    table = tmp_path / "table.json"
    w = fit_whitening_run(out / "best", fits={"own": [str(pair_data / "sts_train.tsv")],
                                              "general": [str(tmp_path / "general.txt")]},
                          eval_files=dev, ks=[8], out=tmp_path / "auto", metrics_path=table, max_sentences=100)
    assert json.loads(table.read_text()) == w
    assert w["fits"]["own"]["sentences"] == 100 and w["fits"]["general"]["sentences"] == 50
    assert w["fits"]["own"]["ks"] == [8, 32] and w["fits"]["general"]["ks"] == [8, 32]  # JL(100) = 39 > 32
    rows = ["none", "own/k=8", "own/k=32", "general/k=8", "general/k=32"]
    assert list(w["mean_spearman"]) == ["none", "own/k=8", "own/k=32", "general/k=8", "general/k=32"]
    assert all(set(w["scores"][r]) == set(dev) for r in rows)
    best = max(w["mean_spearman"].values())
    assert w["chosen_mean_spearman"] == best and w["choice"] in rows
    # no whitening is a stored outcome like any other: the checkpoint (and its bundle) then has none
    none = fit_whitening_run(tmp_path / "auto", fits={"own": [str(pair_data / "sts_train.tsv")]}, choose="none",
                             out=tmp_path / "none", max_sentences=100)
    assert none["k"] is None and none["choice"] == "none"
    assert not (tmp_path / "none" / "whitening.safetensors").exists()
    model = load_similarity(tmp_path / "none")
    assert model.whitening is None and model.dim == 32
    again = fit_whitening_run(tmp_path / "none", fits={"general": [str(tmp_path / "general.txt")]},
                              choose="general/k=5", out=tmp_path / "k5")
    assert again["k"] == 5 and load_similarity(tmp_path / "k5").dim == 5
    with pytest.raises(ValueError, match="names no setting"):
        fit_whitening_run(tmp_path / "none", fits={"general": [str(tmp_path / "general.txt")]}, choose="own/k=5",
                          out=tmp_path / "x")
    assert sample_texts(iter("abcdefgh"), 3, seed=1) == sample_texts(iter("abcdefgh"), 3, seed=1)
    assert len(sample_texts(iter("abcdefgh"), 3, seed=1)) == 3 and sample_texts(iter("abc"), 0, seed=1) == list("abc")


def test_whitening_prefers_none_when_it_scores_best(trained, pair_data, tmp_path, monkeypatch):
    import training.whitening as wh

    out, _ = trained
    real = wh.score_ks

    def none_wins(pooled, mu, W, ks):  # the unwhitened row scores 100 everywhere
        table = real(pooled, mu, W, ks)
        table["none"] = {n: v | {"spearman": 100.0} for n, v in table["none"].items()}
        return table

    monkeypatch.setattr(wh, "score_ks", none_wins)
    res = CliRunner().invoke(app, ["train", "whitening", "--model", str(out / "best"), "--fit",
                                   f"own={pair_data / 'sts_train.tsv'}", "--eval", str(pair_data / "sts_dev.tsv"),
                                   "--out", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert "no whitening stored" in res.output
    w = json.loads((tmp_path / "w" / "metrics.json").read_text())["whitening"]
    assert w["choice"] == "none" and w["chosen_by"] == "best mean dev spearman"
    assert not (tmp_path / "w" / "whitening.safetensors").exists()
