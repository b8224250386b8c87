"""recipes/default.sh, the one command that reproduces the shipped models, runs end to end against a stub
``ropenlp`` (tests/recipe_stub.py) that checks every call as the real command would before any work: the
config first, every override a known key, every model.init and input present when the call is made."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tree(tmp_path: Path) -> Path:
    """A copy of what the script reads (recipes, research scripts, the committed encoder's record) and a stub."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "recipes", repo / "recipes")
    shutil.copytree(ROOT / "research", repo / "research")
    (repo / "encoders" / "roformer-zh-v3").mkdir(parents=True)
    shutil.copy(ROOT / "encoders" / "roformer-zh-v3" / "encoder.json", repo / "encoders" / "roformer-zh-v3")
    (repo / "metrics").mkdir()
    (repo / "data" / "cluener").mkdir(parents=True)  # the dev file the CLUENER average is calibrated on
    (repo / "data" / "cluener" / "dev.json").write_text("", encoding="utf-8")
    # the whitening step runs research/sim_v3.sh (its own tests: tests/test_research_sim_v3.py); here its
    # output is already there, so the script goes on to export and evaluate
    (repo / "runs" / "sim_v3_s5_ibn_e4_whitened").mkdir(parents=True)
    stub = repo / "ropenlp-stub"
    stub.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests" / "recipe_stub.py"}" "$@"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return repo


def _run(repo: Path, log: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUN": str(repo / "ropenlp-stub"), "STUB_LOG": str(log), "PYTHONPATH": str(ROOT)}
    return subprocess.run(["bash", str(repo / "recipes" / "default.sh"), str(repo / "data")], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


def test_default_recipe_runs_every_step_in_order(tmp_path):
    repo, log = _tree(tmp_path), tmp_path / "calls.jsonl"
    done = _run(repo, log)
    assert done.returncode == 0, done.stderr + "".join(
        p.read_text() for p in (repo / "runs").glob("*/train.out"))
    calls = [json.loads(line)["argv"] for line in log.read_text().splitlines()]
    trains = [(c[1], c[2], c[c.index("--output.dir") + 1]) for c in calls if c[0] == "train"
              and c[1] in ("mlm", "ner", "sim")]
    outs = [o for _, _, o in trains]
    # the vocabulary run and five pre-training stages, one after the other, each from the last release
    assert outs[:6] == ["runs/pt_vocab", "runs/pretrain_v3_s1", "runs/pretrain_v3_s2", "runs/pretrain_v3_s3",
                        "runs/pretrain_v3_s4", "runs/pretrain_v3_s5"]
    inits = {c[c.index("--output.dir") + 1]: c[c.index("--model.init") + 1] for c in calls
             if "--model.init" in c and "--output.dir" in c}
    assert inits["runs/pretrain_v3_s4"] == "runs/encoder_v3_s3"
    assert inits["runs/pretrain_v3_s5"] == "runs/encoder_v3_s4"
    # the task runs start from the stage each was measured best on: CLUENER from stage 3 (through the
    # intermediate NER stage), CMeEE from stage 4, similarity from stage 5
    assert inits["runs/ner_intermediate_s3"] == "runs/encoder_v3_s3"
    assert inits["runs/ner_cmeee_s4_fgm"] == "runs/encoder_v3_s4"
    assert inits["runs/sim_v3_s5_ibn"] == "runs/encoder_v3_s5"
    assert inits["runs/ner_cluener_s3_inter_fgm"] == "runs/ner_intermediate_s3/best"
    assert sorted(trains[6:10]) == sorted([
        ("ner", "recipes/ner_intermediate.toml", "runs/ner_intermediate_s3"),
        ("ner", "recipes/ner_cluener.toml", "runs/ner_cluener_s3_inter_fgm"),
        ("ner", "recipes/ner_cmeee.toml", "runs/ner_cmeee_s4_fgm"),
        ("sim", "recipes/sim_v3.toml", "runs/sim_v3_s5_ibn")])
    # the similarity run adds the in-batch softmax over CoSENT positives (docs/research.md, `sim_v3_s5_ibn`)
    sim, rest, e2, e3, e4 = [c for c in calls if c[:2] == ["train", "sim"]]
    assert sim[sim.index("--sim.contrastive_weight") + 1] == "1.0"
    # then continued over the rest of its epoch: its data after its last checkpoint, its best weights, the
    # same overrides but the schedule (docs/research.md, `sim_v3_s5_ibn_rest`)
    assert inits["runs/sim_v3_s5_ibn_rest"] == "runs/sim_v3_s5_ibn/best"
    assert rest[rest.index("--training.data_from") + 1] == "runs/sim_v3_s5_ibn/checkpoints/step-00002985"
    assert rest[rest.index("--sim.contrastive_weight") + 1] == "1.0" and rest[rest.index("--training.lr") + 1] == "4e-5"
    # and that one into a second epoch, on through it and into a third, the same way (docs/research.md,
    # `sim_v3_s5_ibn_e2`, `sim_v3_s5_ibn_e3`, `sim_v3_s5_ibn_e4`)
    assert trains[-4:] == [("sim", "recipes/sim_v3.toml", "runs/sim_v3_s5_ibn_rest"),
                           ("sim", "recipes/sim_v3.toml", "runs/sim_v3_s5_ibn_e2"),
                           ("sim", "recipes/sim_v3.toml", "runs/sim_v3_s5_ibn_e3"),
                           ("sim", "recipes/sim_v3.toml", "runs/sim_v3_s5_ibn_e4")]
    for run, stage, base in (("sim_v3_s5_ibn_e2", e2, "sim_v3_s5_ibn_rest"), ("sim_v3_s5_ibn_e3", e3, "sim_v3_s5_ibn_e2"),
                             ("sim_v3_s5_ibn_e4", e4, "sim_v3_s5_ibn_e3")):
        assert inits[f"runs/{run}"] == f"runs/{base}/best"
        assert stage[stage.index("--training.data_from") + 1] == f"runs/{base}/checkpoints/step-00001753"
        assert stage[stage.index("--sim.contrastive_weight") + 1] == "1.0"
        assert stage[stage.index("--training.lr") + 1] == "3e-5"
    # then two more CLUENER seeds from the same start (init_seed 42, the seed-42 run's head), and the average
    seeds = {c[c.index("--output.dir") + 1]: c for c in calls if "--training.init_seed" in c}
    assert sorted(seeds) == ["runs/ner_cluener_s3_inter_fgm_seed1", "runs/ner_cluener_s3_inter_fgm_seed2"]
    for out, c in seeds.items():
        assert c[c.index("--training.init_seed") + 1] == "42" and c[c.index("--training.seed") + 1] == out[-1]
        assert inits[out] == "runs/ner_intermediate_s3/best" and c[c.index("--training.adversarial") + 1] == "0.5"
    (average,) = [c for c in calls if c[:2] == ["train", "average"]]
    assert average[2:5] == ["runs/ner_cluener_s3_inter_fgm/best", "runs/ner_cluener_s3_inter_fgm_seed1/best",
                            "runs/ner_cluener_s3_inter_fgm_seed2/best"]
    assert average[average.index("-o") + 1] == "runs/ner_cluener_s3_soup"
    assert calls.index(average) > max(calls.index(c) for c in seeds.values())
    releases = [c[c.index("--name") + 1] for c in calls if c[:2] == ["train", "release"]]
    assert [r.split("(")[1].split(":")[0] for r in releases] == ["stage 1", "stage 2", "stage 3", "stage 4",
                                                                             "stage 5"]
    # exports from those runs, then every bundle and precision evaluated
    exports = [c for c in calls if c[0] == "export"]
    assert {c[c.index("-o") + 1] for c in exports} == {"service/bundles/default", "runs/bundle_gpu",
                                                       "service/bundles/medical", "runs/bundle_medical_gpu"}
    assert all("runs/ner_cluener_s3_soup" in c or "runs/ner_cmeee_s4_fgm/best" in c for c in exports)
    assert all("runs/sim_v3_s5_ibn_e4_whitened" in c for c in exports if "runs/ner_cluener_s3_soup" in c)
    assert all(calls.index(c) > calls.index(average) for c in exports)
    evaluated = {c[c.index("--out") + 1] for c in calls if c[0] == "evaluate"}
    assert evaluated == {f"metrics/{d}_dev_{p}_v3.json" for d in ("cluener", "sim", "cmeee")
                         for p in ("int8", "fp32", "fp16")}
    assert (repo / "metrics" / "train_ner_cluener_s3_inter_fgm.json").is_file()
    assert json.loads((repo / "metrics" / "train_ner_cluener_s3_soup.json").read_text())["averaged_from"]
    # the encoder folder the recipes and tests use holds stage 5 (copied unless it already did)
    assert json.loads((repo / "encoders" / "roformer-zh-v3" / "encoder.json").read_text())["name"].count("stage 5")


def test_the_stub_fails_as_the_command_would(tmp_path):
    """A config given after the overrides (the mistake this test was written for) and an unknown key fail."""
    repo, log = _tree(tmp_path), tmp_path / "calls.jsonl"
    env = {**os.environ, "STUB_LOG": str(log), "PYTHONPATH": str(ROOT)}
    for argv, message in [
            (["train", "ner", "--data.root", "d", "recipes/ner_cmeee.toml"], "needs the config file first"),
            (["train", "ner", "recipes/ner_cmeee.toml", "--training.no_such_key", "1"], "no_such_key"),
            (["train", "ner", "recipes/ner_cmeee.toml", "--model.init", "runs/missing"], "runs/missing"),
            (["train", "average", "runs/a", "-o", "runs/b"], "at least two checkpoints"),
            (["train", "average", "runs/a", "runs/c", "-o", "runs/b"], "runs/a/ropenlp.json")]:
        done = subprocess.run([str(repo / "ropenlp-stub"), *argv], cwd=repo, env=env, capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (argv, done.stderr)
