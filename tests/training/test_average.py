"""Model soups: training.init_seed (the same start whatever the seed) and ropenlp train average (the
parameter-wise mean of checkpoints, with every mismatch refused before anything is written)."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from models.tasks import load_ner, read_task
from ropenlp.cli import app
from training.average import average_checkpoints
from training.config import TrainingConfig
from training.loop import new_weights_rng, set_seed
from training.ner import train_ner

from .synthetic import tiny_ner_config


def _config(data_dir, out_dir, vocab, **overrides):
    short = {"ner.calibrate_threshold": False, "training.max_steps": 12, "training.warmup_steps": 2,
             "training.eval_every": 12, "training.checkpoint_every": 12}
    return tiny_ner_config(data_dir, out_dir, vocab, **short | overrides)


@pytest.fixture(scope="module")
def runs(ner_data, tiny_vocab, tmp_path_factory):
    """Two fine-tunes from one start (init_seed 7), seeds 1 and 2; thresholds set apart by hand."""
    root = tmp_path_factory.mktemp("soup")
    out = []
    for seed, threshold in ((1, -0.5), (2, 0.5)):
        d = root / f"seed{seed}"
        train_ner(_config(ner_data, d, tiny_vocab, **{"training.seed": seed, "training.init_seed": 7}))
        meta = read_task(d / "model")
        (d / "model" / "ropenlp.json").write_text(json.dumps(meta | {"threshold": threshold}), encoding="utf-8")
        out.append(d / "model")
    return out


def _build(vocab_size=40, init_seed=None, seed=0):
    from models.roformer import RoFormerConfig, RoFormerEncoder
    from models.tasks import NerConfig, NerModel

    set_seed(seed)
    with new_weights_rng(TrainingConfig(seed=seed, init_seed=init_seed)):
        enc = RoFormerEncoder(RoFormerConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))
        return NerModel(enc, NerConfig(labels=("a", "b"), head_size=8))


def test_init_seed_gives_the_same_start_and_leaves_the_training_rng_alone():
    a, b = _build(init_seed=7, seed=1), _build(init_seed=7, seed=2)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not torch.equal(_build(seed=1).head.state_dict()["dense.weight"],
                           _build(seed=2).head.state_dict()["dense.weight"])
    set_seed(3)
    expected = torch.rand(4)
    set_seed(3)
    with new_weights_rng(TrainingConfig(seed=3, init_seed=9)):
        torch.rand(100)  # weights drawn here do not move the training RNG
    assert torch.equal(torch.rand(4), expected)


def test_init_seed_equal_to_the_seed_trains_exactly_as_without_it(ner_data, tiny_vocab, tmp_path):
    """The runs made before init_seed existed are the runs with init_seed = seed."""
    a = train_ner(_config(ner_data, tmp_path / "a", tiny_vocab, **{"training.seed": 5, "training.max_steps": 4}))
    b = train_ner(_config(ner_data, tmp_path / "b", tiny_vocab,
                          **{"training.seed": 5, "training.init_seed": 5, "training.max_steps": 4}))
    assert a.step == b.step == 4
    wa, wb = (load_file(str(tmp_path / r / "model" / "head.safetensors")) for r in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_average_is_the_parameter_mean_and_loads(runs, tmp_path):
    out = tmp_path / "avg"
    record = average_checkpoints(runs, out)
    for name in ("model.safetensors", "head.safetensors"):
        x, y, m = (load_file(str(p / name)) for p in (*runs, out))
        assert set(m) == set(x)
        for k in m:
            assert m[k].dtype == x[k].dtype
            assert torch.allclose(m[k], (x[k].double() + y[k].double()).div(2).to(x[k].dtype), atol=0, rtol=0), k
        assert any(not torch.equal(x[k], y[k]) for k in x)  # the seeds did train apart
    assert read_task(out)["threshold"] == 0.0  # the mean of -0.5 and 0.5 without dev data
    assert list(record["averaged_from"]) == [str(p) for p in runs]
    assert [r["threshold"] for r in record["averaged_from"].values()] == [-0.5, 0.5]
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(record))
    model = load_ner(out)
    assert model.cfg.labels == load_ner(runs[0]).cfg.labels
    assert (out / "vocab.txt").read_bytes() == (runs[0] / "vocab.txt").read_bytes()


def test_average_calibrates_the_threshold_on_dev(runs, ner_data, tmp_path):
    record = average_checkpoints(runs, tmp_path / "avg", dev=[str(ner_data / "dev.json")],
                                 threshold_grid=(-1.0, 0.0, 1.0))
    # the metrics.json of a trained checkpoint (what the export copies into the manifest), and its sources
    assert record["threshold"] in (-1.0, 0.0, 1.0) and read_task(tmp_path / "avg")["threshold"] == record["threshold"]
    assert record["dev_f1"] == max(record["threshold_f1"].values()) and record["decode"] == "nested"
    assert {"dev_precision", "dev_recall", "dev_f1_by_decode", "dev", "dev_gold_not_targetable"} <= record.keys()
    assert len(record["averaged_from"]) == 2
    assert json.loads((tmp_path / "avg" / "metrics.json").read_text()) == json.loads(json.dumps(record))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_mismatches_are_refused_before_anything_is_written(runs, tmp_path):
    out = tmp_path / "avg"
    other = _copy(runs[1], tmp_path / "labels")
    meta = read_task(other)
    (other / "ropenlp.json").write_text(json.dumps(meta | {"labels": ["x", "y", "z"]}), encoding="utf-8")
    with pytest.raises(ValueError, match=r"task settings \(ropenlp.json\) \(labels\) differs"):
        average_checkpoints([runs[0], other], out)
    shape = _copy(runs[1], tmp_path / "shape")
    head = load_file(str(shape / "head.safetensors"))
    k = next(iter(head))
    head[k] = torch.zeros(3, 3)
    save_file(head, str(shape / "head.safetensors"))
    with pytest.raises(ValueError, match=f"shape.*head.safetensors:{k}"):
        average_checkpoints([runs[0], shape], out)
    white = _copy(runs[1], tmp_path / "white")
    (white / "whitening.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="whitening"):
        average_checkpoints([runs[0], white], out)
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([runs[0]], out)
    with pytest.raises(ValueError, match="listed twice"):
        average_checkpoints([runs[0], runs[0]], out)
    with pytest.raises(ValueError, match="is one of the checkpoints"):
        average_checkpoints(runs, runs[0])
    assert not out.exists()


def test_cli_average_and_its_errors(runs, ner_data, tmp_path):
    out = tmp_path / "avg"
    r = CliRunner().invoke(app, ["train", "average", *map(str, runs), "-o", str(out), "--dev",
                                 str(ner_data / "dev.json"), "--threshold-grid=-1,0,1"])
    assert r.exit_code == 0, r.output
    assert "the mean of 2 checkpoints; threshold" in r.output and "dev F1" in r.output
    r = CliRunner().invoke(app, ["train", "average", *map(str, runs), "-o", str(out)])
    assert r.exit_code == 2 and "exists and is not empty" in r.output
    before = sorted(p.name for p in out.iterdir())
    r = CliRunner().invoke(app, ["train", "average", str(runs[0]), str(tmp_path / "nope"), "-o", str(out),
                                 "--overwrite"])
    assert r.exit_code == 2 and sorted(p.name for p in out.iterdir()) == before  # a refused run replaces nothing
    r = CliRunner().invoke(app, ["train", "average", str(runs[0]), str(tmp_path / "nope"), "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no such checkpoint directory" in r.output


def test_each_kind_brings_its_own_rule():
    """The average asks the trainer module of a kind (no branch on task names): NER chooses its threshold
    again, similarity and a kind without a trainer module choose nothing."""
    from training.average import rechoose

    assert rechoose("ner").keys == ("threshold",) and rechoose("ner").calibrate is not None
    assert rechoose("similarity").keys == () and rechoose("similarity").calibrate is None
    assert rechoose("no_such_kind").keys == ()
