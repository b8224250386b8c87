"""NER training: targets, a few steps that learn, the best checkpoint, threshold calibration, decoding
mode (nested / flat, auto), evaluate CLI."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from models.roformer import RoFormerConfig, RoFormerEncoder
from models.spans import Entity
from models.tasks import NerConfig, NerModel, load_ner, read_task
from models.text import Tokenizer
from ropenlp.cli import app
from training.config import ConfigError
from training.data import ReadReport
from ropenlp.evaluate import evaluate_ner
from training.batches import EpochBatches
from training.loop import build_scheduler, train_steps
from training.metrics import ner_scores
from training.ner import (
    NerCollator,
    calibrate,
    choose_decode,
    gold_spans,
    overlapping_gold,
    pred_spans,
    predict_entities,
    train_ner,
)
from training.ner_data import NerRecord, Span, align_records, read_ner

from .synthetic import tiny_ner_config as tiny_config




@pytest.fixture(scope="module")
def trained(ner_data, tiny_vocab, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ner"
    result = train_ner(tiny_config(ner_data, out, tiny_vocab))
    return out, result


def test_dense_and_sparse_targets_give_the_same_loss(ner_data, tiny_vocab):
    tok = Tokenizer.from_vocab(tiny_vocab)
    recs = list(read_ner([ner_data / "train.json"], ReadReport()))[:8]
    labels = ["name", "org", "place"]
    examples, _ = align_records(recs, tok, labels, max_length=24, stride=12)
    torch.manual_seed(0)
    enc = RoFormerEncoder(RoFormerConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))
    model = NerModel(enc, NerConfig(labels=tuple(labels), head_size=8)).eval()
    dense = NerCollator(tok.pad_id, 3, loss="dense")(examples)
    sparse = NerCollator(tok.pad_id, 3, loss="sparse")(examples)
    assert sparse["targets"].dtype == torch.long and dense["targets"].dtype == torch.bool
    assert int(dense["targets"].sum()) == int((sparse["targets"] >= 0).sum()) == sum(len(e.spans) for e in examples)
    with torch.no_grad():
        assert model(**dense)[1].item() == pytest.approx(model(**sparse)[1].item(), rel=1e-5)


def test_steps_reduce_loss_and_checkpoint_reloads_identically(ner_data, tiny_vocab, tmp_path):
    tok = Tokenizer.from_vocab(tiny_vocab)
    recs = list(read_ner([ner_data / "train.json"], ReadReport()))
    labels = ("name", "org", "place")
    examples, _ = align_records(recs, tok, labels, max_length=24, stride=12)
    torch.manual_seed(0)
    enc = RoFormerEncoder(RoFormerConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = NerModel(enc, NerConfig(labels=labels, head="gp", head_size=16, max_length=24, stride=12))
    collate = NerCollator(tok.pad_id, len(labels))
    fixed = collate(examples[:32])
    with torch.no_grad():
        before = model.eval()(**fixed)[1].item()
    from training.config import TrainingConfig
    from training.loop import build_optimizer

    cfg = TrainingConfig(lr=5e-3, max_steps=30)
    opt = build_optimizer(model, cfg)
    batches = EpochBatches(examples, collate=collate, batch_size=16, seed=0)
    list(train_steps(model, opt, build_scheduler(opt, cfg, 30), batches, max_steps=30))
    model.eval()
    with torch.no_grad():
        after = model(**fixed)[1].item()
    assert after < 0.5 * before
    model.save(tmp_path / "ckpt", tokenizer_from=tiny_vocab)
    again = load_ner(tmp_path / "ckpt").eval()
    with torch.no_grad():
        assert torch.equal(model(fixed["input_ids"], fixed["attention_mask"])[0],
                           again(fixed["input_ids"], fixed["attention_mask"])[0])
    texts = [r.text for r in recs[:20]]
    assert predict_entities(model, tok, texts) == predict_entities(again, tok, texts)


def test_train_ner_writes_best_checkpoint_and_learns(trained, ner_data):
    out, result = trained
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 40 and np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    evals = [r["eval"] for r in log if "eval" in r]
    assert len(evals) == 2 and {"f1", "precision", "recall", "nested_f1", "macro_f1"} <= evals[0].keys()
    best = out / "best"
    meta = read_task(best)
    assert meta["labels"] == ["name", "org", "place"] and meta["max_length"] == 24 and meta["stride"] == 12
    assert (best / "vocab.txt").is_file() and (best / "head.safetensors").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["train"]["misaligned"] == 0 and metrics["data"]["train"]["records"] == 160
    assert metrics["calibration"]["threshold"] == meta["threshold"]
    assert meta["decode"] == "nested" and metrics["calibration"]["decode"] == "nested"  # auto: the data nests
    by_decode = metrics["best_dev"]["dev_f1_by_decode"]  # both modes at the calibrated threshold
    assert set(by_decode) == {"nested", "flat"} and by_decode["nested"] == metrics["best_dev"]["dev_f1"]
    assert metrics["calibration"]["dev_f1_by_decode"] == by_decode
    assert result.best == pytest.approx(max(e["f1"] for e in evals))


def test_reloaded_best_scores_what_training_recorded(trained, ner_data):
    out, _ = trained
    recorded = json.loads((out / "best" / "metrics.json").read_text())
    again = evaluate_ner([str(ner_data / "dev.json")], model=out / "best")
    assert again["f1"] == recorded["dev_f1"] and again["threshold"] == recorded["threshold"]
    assert again["scores"]["per_type"] == recorded["dev"]["per_type"]


def test_calibration_picks_the_best_grid_threshold():
    gold = [[(0, 2, "A"), (3, 5, "A")]]
    ents = [[Entity(0, 2, "A", "", 0.8), Entity(3, 5, "A", "", -0.3), Entity(6, 7, "A", "", -0.8)]]
    best, f1 = calibrate(gold, ents, [-1.0, -0.5, 0.0, 0.5], ["A"])
    assert best == -0.5 and f1 == {"-1": pytest.approx(0.8), "-0.5": 1.0, "0": pytest.approx(2 / 3),
                                   "0.5": pytest.approx(2 / 3)}


def test_calibration_filters_then_flattens():
    """Flat decoding at a threshold = the merged entities above it, then non-overlapping ones."""
    gold = [[(0, 4, "A")]]
    ents = [[Entity(0, 4, "A", "", 0.2), Entity(0, 2, "A", "", 0.6), Entity(2, 4, "A", "", -0.4)]]
    assert pred_spans(ents, 0.0, "flat") == [[(0, 2, "A")]]  # 0..2 beats 0..4 and knocks it out
    assert pred_spans(ents, 1.0, "flat") == [[]] and pred_spans(ents, -1.0, "nested") == [
        [(0, 4, "A"), (0, 2, "A"), (2, 4, "A")]]
    best, f1 = calibrate(gold, ents, [-1.0, 0.0, 0.5, 1.0], ["A"], decode="flat")
    assert f1 == {"-1": 0.0, "0": 0.0, "0.5": 0.0, "1": 0.0} and best == 0.0  # all equal: the preferred one
    outer_wins = [[Entity(0, 4, "A", "", 0.2), Entity(0, 2, "A", "", -0.1)]]
    best, f1 = calibrate(gold, outer_wins, [-0.5, 0.0], ["A"], decode="flat")
    assert best == 0.0 and f1 == {"-0.5": 1.0, "0": 1.0}
    _, f1 = calibrate(gold, ents, [-1.0, 0.0, 0.5], ["A"], decode="nested")  # the same entities, nested
    assert f1 == {"-1": pytest.approx(0.5), "0": pytest.approx(2 / 3), "0.5": 0.0}


def test_calibrated_flat_f1_equals_flat_decoding_at_each_threshold(ner_data, tiny_vocab):
    """What calibrate scores per threshold (decoded once at min(grid), filtered, then flattened) is what
    predict_entities gives at that threshold with decode="flat", windows merged: a random tiny model
    on windows of 12 tokens, 6 apart, so spans are merged across windows."""
    tok = Tokenizer.from_vocab(tiny_vocab)
    recs = list(read_ner([ner_data / "dev.json"], ReadReport()))
    labels = ("name", "org", "place")
    torch.manual_seed(0)
    enc = RoFormerEncoder(RoFormerConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, intermediate_size=32,
                                         max_position_embeddings=64))
    model = NerModel(enc, NerConfig(labels=labels, head="gp", head_size=8, max_length=12, stride=6)).eval()
    texts, gold, grid = [r.text for r in recs], gold_spans(recs), (-0.5, 0.0, 0.25, 0.5)
    low = predict_entities(model, tok, texts, threshold=min(grid), decode="nested")
    _, f1 = calibrate(gold, low, grid, labels, decode="flat")
    for t in grid:
        direct = predict_entities(model, tok, texts, threshold=t, decode="flat")
        assert pred_spans(low, t, "flat") == pred_spans(direct)
        assert f1[f"{t:g}"] == ner_scores(gold, pred_spans(direct), labels)["f1"]
        nested = predict_entities(model, tok, texts, threshold=t, decode="nested")
        assert sum(map(len, direct)) < sum(map(len, nested))  # the random model overlaps: flat drops some


def test_decode_auto_counts_overlapping_gold():
    def rec(*spans):
        return NerRecord(text="x" * 10, spans=tuple(Span(*s) for s in spans), path="f", line=1)

    flat = [rec((0, 2, "A"), (2, 4, "B")), rec(), rec((5, 9, "A"))]  # adjacent spans do not overlap
    assert overlapping_gold(flat) == (0, 0) and choose_decode("auto", flat) == "flat"
    nested = flat + [rec((0, 4, "A"), (0, 2, "B"), (6, 8, "A")), rec((0, 3, "A"), (2, 5, "A")),
                     rec((1, 3, "A"), (1, 3, "B"))]  # nesting, crossing, one span under two labels
    assert overlapping_gold(nested) == (6, 3) and choose_decode("auto", nested) == "nested"
    assert choose_decode("flat", nested) == "flat" and choose_decode("nested", flat) == "nested"
    slips = [rec((0, 4, "A"), (0, 2, "B"))] + [rec((0, 2, "A"))] * 99  # 1 % of the texts: still flat data
    assert choose_decode("auto", slips) == "flat" and choose_decode("auto", slips[:99]) == "nested"


def _flatten_file(src, dst) -> None:
    """The synthetic records without the places nested in organisations: flat (CLUENER-like) data."""
    out = []
    for line in src.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        orgs = [p for ps in r["label"].get("org", {}).values() for p in ps]
        places = {w: [p for p in ps if not any(s <= p[0] and p[1] <= e for s, e in orgs)]
                  for w, ps in r["label"].pop("place", {}).items()}
        if any(places.values()):
            r["label"]["place"] = {w: ps for w, ps in places.items() if ps}
        out.append(json.dumps(r, ensure_ascii=False) + "\n")
    dst.write_text("".join(out), encoding="utf-8")


def test_decode_auto_on_flat_data_trains_and_saves_flat(ner_data, tiny_vocab, tmp_path, caplog):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.json", "dev.json"):
        _flatten_file(ner_data / name, data / name)
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="training.ner"):
        train_ner(tiny_config(data, out, tiny_vocab, **{"training.max_steps": 10, "training.eval_every": 10,
                                                         "training.checkpoint_every": 10}))
    assert "ner.decode = auto: 0 overlapping gold spans in 0 of 160 training texts -> flat" in caplog.text
    assert read_task(out / "best")["decode"] == "flat"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["calibration"]["decode"] == "flat" and metrics["best_dev"]["decode"] == "flat"
    by_decode = metrics["best_dev"]["dev_f1_by_decode"]
    assert set(by_decode) == {"nested", "flat"} and by_decode["flat"] == metrics["best_dev"]["dev_f1"]
    again = evaluate_ner([str(data / "dev.json")], model=out / "best")  # the checkpoint's decode by default
    assert again["decode"] == "flat" and again["f1"] == by_decode["flat"]
    assert again["scores"]["nested"]["predicted"] == 0  # flat predictions never nest
    nested = evaluate_ner([str(data / "dev.json")], model=out / "best", decode="nested")
    assert nested["decode"] == "nested" and nested["f1"] == by_decode["nested"]


def test_resume_needs_the_flag_and_config_is_strict(trained, ner_data, tiny_vocab):
    out, _ = trained
    with pytest.raises(FileExistsError):
        train_ner(tiny_config(ner_data, out, tiny_vocab))
    with pytest.raises(ConfigError, match="ner.nope"):
        tiny_config(ner_data, out, tiny_vocab, **{"ner.nope": 1})


def test_evaluate_cli_writes_metrics_json(trained, ner_data, tmp_path):
    out, _ = trained
    target = tmp_path / "m" / "metrics.json"
    res = CliRunner().invoke(app, ["evaluate", "ner", "--model", str(out / "best"), "--data",
                                   str(ner_data / "dev.json"), "--out", str(target)])
    assert res.exit_code == 0, res.output
    assert "micro" in res.output and "nested only" in res.output
    m = json.loads(target.read_text())
    assert m["task"] == "ner" and 0 <= m["f1"] <= 1 and set(m["scores"]["per_type"]) == {"name", "org", "place"}
    bad = CliRunner().invoke(app, ["evaluate", "ner", "--data", str(ner_data / "dev.json")])
    assert bad.exit_code == 2 and "exactly one of --model" in bad.output
    assert m["decode"] == "nested"  # the checkpoint's


def test_evaluate_cli_decode_flat(trained, ner_data, tmp_path):
    out, _ = trained
    args = ["evaluate", "ner", "--model", str(out / "best"), "--data", str(ner_data / "dev.json")]
    res = CliRunner().invoke(app, [*args, "--decode", "flat", "--out", str(tmp_path / "flat.json")])
    assert res.exit_code == 0, res.output
    assert "flat decode" in res.output
    m = json.loads((tmp_path / "flat.json").read_text())
    model, tok = load_ner(out / "best"), Tokenizer.load(out / "best")
    recs = list(read_ner([ner_data / "dev.json"], ReadReport()))
    ents = predict_entities(model, tok, [r.text for r in recs], decode="flat")
    assert m["decode"] == "flat"
    assert m["scores"] == ner_scores(gold_spans(recs), pred_spans(ents), model.cfg.labels)
    assert m["scores"]["nested"]["predicted"] == 0  # no predicted entity nests another
    recorded = json.loads((out / "best" / "metrics.json").read_text())
    assert m["f1"] == recorded["dev_f1_by_decode"]["flat"]  # what training recorded for the other mode
    bad = CliRunner().invoke(app, [*args, "--decode", "bogus"])
    assert bad.exit_code == 2 and "unknown decode 'bogus'; choose from nested, flat" in bad.output


def test_bundle_scores_like_the_checkpoint(trained, ner_data, tmp_path):
    pytest.importorskip("onnxruntime")
    from export.onnx import export_bundle

    out, _ = trained
    export_bundle(tmp_path / "bundle", ner=out / "best", precisions=["fp32"])
    torch_m = evaluate_ner([str(ner_data / "dev.json")], model=out / "best")
    onnx_m = evaluate_ner([str(ner_data / "dev.json")], bundle=tmp_path / "bundle", precision="fp32")
    assert onnx_m["graph_precision"] == "fp32" and onnx_m["max_length"] == 24 and onnx_m["stride"] == 12
    assert onnx_m["scores"] == torch_m["scores"]
    flat_torch = evaluate_ner([str(ner_data / "dev.json")], model=out / "best", decode="flat")
    flat_onnx = evaluate_ner([str(ner_data / "dev.json")], bundle=tmp_path / "bundle", precision="fp32",
                             decode="flat")
    assert flat_onnx["decode"] == "flat" and flat_onnx["scores"] == flat_torch["scores"]


def test_head_has_its_own_learning_rate():
    from training.config import TrainingConfig
    from training.encoders import build_task_optimizer

    enc = RoFormerEncoder(RoFormerConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=16, max_position_embeddings=32))
    model = NerModel(enc, NerConfig(labels=("A",), head_size=8))
    opt = build_task_optimizer(model, model.head, TrainingConfig(lr=1e-4, weight_decay=0.1), head_lr=1e-3)
    by_lr = {}
    for g in opt.param_groups:
        by_lr.setdefault(g["lr"], set()).update(id(p) for p in g["params"])
    assert by_lr[1e-3] == {id(p) for p in model.head.parameters()}
    assert by_lr[1e-4] == {id(p) for p in model.encoder.parameters()}
    assert {g["weight_decay"] for g in opt.param_groups if g["lr"] == 1e-3} == {0.0, 0.1}


def test_a_dev_file_used_for_training_is_refused(ner_data, tiny_vocab, tmp_path):
    with pytest.raises(ValueError, match="listed in data.train and data.dev"):
        train_ner(tiny_config(ner_data, tmp_path / "x", tiny_vocab, **{"data.dev": ["train.json"]}))


def test_evaluate_threshold_grid_reports_each_threshold_and_scores_at_the_best(trained, ner_data, tmp_path):
    out, _ = trained
    grid = [-1.0, -0.5, 0.0, 0.5]
    for decode in ("nested", "flat"):
        m = evaluate_ner([str(ner_data / "dev.json")], model=out / "best", decode=decode, threshold_grid=grid)
        assert m["threshold_tuned_on_this_data"] and set(m["f1_by_threshold"]) == {"-1", "-0.5", "0", "0.5"}
        for t in grid:  # each grid value equals a plain evaluation at that threshold
            plain = evaluate_ner([str(ner_data / "dev.json")], model=out / "best", decode=decode, threshold=t)
            assert m["f1_by_threshold"][f"{t:g}"] == plain["f1"]
        assert m["f1"] == max(m["f1_by_threshold"].values()) and m["f1"] == m["f1_by_threshold"][f"{m['threshold']:g}"]
    args = ["evaluate", "ner", "--model", str(out / "best"), "--data", str(ner_data / "dev.json")]
    res = CliRunner().invoke(app, [*args, "--threshold-grid", "-1,0", "--out", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "g.json").read_text())["f1_by_threshold"]) == {"-1", "0"}
    bad = CliRunner().invoke(app, [*args, "--threshold-grid", "a,b"])
    assert bad.exit_code == 2 and "--threshold-grid must be numbers" in bad.output
    both = CliRunner().invoke(app, [*args, "--threshold-grid", "0", "--threshold", "0"])
    assert both.exit_code == 2 and "not both" in both.output
