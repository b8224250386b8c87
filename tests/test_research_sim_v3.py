"""Similarity v3 (issue 15): the recipes read as intended, the research script's commands, the summary tables."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from training.similarity import load_sim_config

ROOT = Path(__file__).resolve().parents[1]
NLI_SETS = {"ocnli", "cnsd_snli", "cmnli", "cnli", "xnli", "cinlid_idiom"}
PAIR_SETS = {"stsb", "bq", "atec", "afqmc", "oppo_xiaobu", "fewclue_bustm", "tianchi_covid", "chinese_sts_xust",
             "qbqtc", "simclue"}
DEV = {"stsb": "stsb_zh/dev.tsv", "lcqmc": "lcqmc/dev.tsv", "bq": "bq/dev.tsv", "atec": "atec/dev.tsv",
       "pawsx": "pawsx/dev.tsv"}


@pytest.mark.parametrize("recipe, sets, objective, init", [
    ("sim_v3.toml", PAIR_SETS | NLI_SETS, "simcse", "encoders/roformer-zh-v3"),
    ("sim_v3_nli.toml", NLI_SETS, "simcse", "encoders/roformer-zh-v3"),
    ("sim_v3_pairs.toml", PAIR_SETS, "cosent", "runs/sim_v3_nli/best")])
def test_the_v3_recipes(recipe, sets, objective, init):
    cfg = load_sim_config(ROOT / "recipes" / recipe)
    train = {s.name: s for s in cfg.data.train}
    assert set(train) == sets and len(cfg.data.train) == len(sets)
    assert {s.name: s.paths[0] for s in cfg.data.dev} == DEV and cfg.sim.select_on == ""
    assert cfg.sim.objective == objective and cfg.model.init == init and cfg.data.dedupe
    assert cfg.sim.eval_sample == 2000 and not cfg.sim.eval_every_epoch
    for name, s in train.items():
        if name in NLI_SETS:
            assert s.labels == {"entailment": 2, "neutral": 1, "contradiction": 0} and s.objective == ""
        else:
            assert s.labels == {} and s.objective == "cosent"
    assert not {p for s in cfg.data.train for p in s.paths} & set(DEV.values())
    names = [s.name for s in cfg.data.train]
    if "simclue" in names:  # the aggregate goes last: the sets it copies keep their pairs
        assert names[-1] == "simclue"
    if "afqmc" in names:
        assert names.index("atec") < names.index("afqmc")
    other = load_sim_config(ROOT / "recipes" / recipe, ["--model.init", "runs/x/model"])
    assert other.model.init == "runs/x/model"


def test_research_script_lists_a_row_per_run_and_the_training_files(tmp_path):
    script = (ROOT / "research" / "sim_v3.sh").read_text(encoding="utf-8")
    runs = script.split("RUNS=(")[1].split(")")[0].split()
    for run in runs:
        if m := re.fullmatch(r"sim_v3_s(\d)", run):  # one recipe per encoder stage: `stage N`
            n = m[1]
            assert 'train "sim_v3_s$1" recipes/' in script and f"stage{n}) stage {n} ;;" in script, run
        elif m := re.fullmatch(r"sim_v3_s(\d)_(seed1|soup)", run):  # `soup N`: a second seed, then the average
            made = ('train "sim_v3_s$1_seed1" recipes/' if m[2] == "seed1"
                    else 'average "sim_v3_s$1_soup" "sim_v3_s$1" "sim_v3_s$1_seed1"\n')
            assert made in script and f"soup{m[1]}) soup {m[1]} ;;" in script, run
        elif run.endswith("_soup"):  # the average of a run and its second seed (`ibnsoup5`)
            base = run.removesuffix("_soup")
            assert f"average {run} {base} {base}_seed1\n" in script, run
        elif m := re.fullmatch(r"(.+)_(rest|e2|e3|e4)", run):  # a run continued over the rest of its epoch
            # (`rest5`), that one into a second epoch (`e2_5`), and on (`e3_5`, `e4_5`): the stage before's weights,
            # and its data from its last checkpoint on
            base = m[1] + {"rest": "", "e2": "_rest", "e3": "_e2", "e4": "_e3"}[m[2]]
            assert f"continued {run} {base} " in script, run
            cmd = script.split("\ncontinued() {")[1].split("\n}")[0]
            assert '--model.init "runs/$2/best"' in cmd and '--training.data_from "runs/$2/checkpoints/step-$3"' in cmd
        elif run.endswith("_path"):  # two stages of one path averaged (`pathavg5`): the second and the third
            base = run.removesuffix("_path")
            assert f"average {run} {base}_rest {base}_e2\n" in script and "pathavg5) pathavg5 ;;" in script, run
        elif run.startswith("sim_v3_s5_ibn"):  # ibn NAME [overrides]: the ibn5 row and its second seed
            assert f"ibn {run}" in script, run
        else:
            assert f"train {run} recipes/" in script
    # the averages: average OUT RUN... puts the mean of the RUNs' best weights in OUT/best
    cmd = script.split("\naverage() {")[1].split("\n}")[0]
    assert 'sources+=("runs/$r/best")' in cmd and '"$RUN" train average "${sources[@]}" -o "runs/$out/best"' in cmd
    # the whitening's "own" fit set: the training files of the run's resolved config
    from training.config import write_resolved

    run = tmp_path / "run"
    write_resolved(load_sim_config(ROOT / "recipes" / "sim_v3_nli.toml"), run)
    snippet = script.split('own=$("$PY" - "runs/$run" "$DATA" <<\'EOF\'\n')[1].split("\nEOF\n")[0]
    # an average (ropenlp train average: only best/, whose metrics.json names its sources): its first source's files
    (tmp_path / "avg" / "best").mkdir(parents=True)
    (tmp_path / "avg" / "best" / "metrics.json").write_text(json.dumps({"averaged_from": {str(run / "best"): {}}}))
    for folder in (run, tmp_path / "avg"):
        own = subprocess.run([sys.executable, "-c", snippet, str(folder), "D"],
                             capture_output=True, text=True, check=True).stdout.strip().split(",")
        assert own[0] == "D/pairs/ocnli/train.tsv" and len(own) == 6 and own[-1] == "D/pairs/cinlid_idiom_nli/train.tsv"
    assert subprocess.run(["bash", "-n", str(ROOT / "research" / "sim_v3.sh")]).returncode == 0


def load_summarise(tmp_path):
    spec = importlib.util.spec_from_file_location("summarise_under_test", ROOT / "research" / "summarise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DIR, module.ROOT = tmp_path, tmp_path  # no run logs of this checkout's runs/ either
    return module


def files(*scores):
    return {f"../shared/data/{d}": {"spearman": s} for d, s in zip(DEV.values(), scores)}


def test_summary_tables_of_all_five_dev_sets_and_the_mean(tmp_path):
    summarise = load_summarise(tmp_path)
    (tmp_path / "sim_v3.config.toml").write_text('[model]\ninit = "encoders/roformer-zh-v3"\npooling = "mean"\n[training]\nthreads = 2\n',
                                                 encoding="utf-8")
    (tmp_path / "sim_v3.json").write_text(json.dumps({"files": files(80, 70, 60, 40, 20)}), encoding="utf-8")
    (tmp_path / "sim_v3.train.json").write_text(json.dumps({"seconds": 600}), encoding="utf-8")
    (tmp_path / "sim_v3_whitening.json").write_text(json.dumps({
        "choice": "none", "fits": {"own": {"sentences": 5000}},
        "scores": {"none": files(80, 70, 60, 40, 20), "own/k=64": files(81, 60, 61, 41, 10)},
        "mean_spearman": {"none": 54.0, "own/k=64": 50.6}}), encoding="utf-8")
    summary = {}
    objectives, whitening = summarise.sim_v3_tables({}, summary)
    assert objectives.splitlines()[2] == ("| `sim_v3` | pairs CoSENT + NLI SimCSE, one mixture | roformer-zh-v3 | mean | "
                                          "80.00 | 70.00 | 60.00 | 40.00 | 20.00 | **54.00** | 10.0 min (2) |")
    assert whitening.splitlines()[0].startswith("| whitening of `sim_v3` (fitted on) |")
    assert whitening.splitlines()[2:] == ["| **none** |  | 80.00 | 70.00 | 60.00 | 40.00 | 20.00 | **54.00** |",
                                          "| own/k=64 | 5000 | 81.00 | 60.00 | 61.00 | 41.00 | 10.00 | 50.60 |"]
    assert summary["sim_v3"]["dev"]["mean"] == 54.0 and summary["sim_v3_whitening"]["choice"] == "none"


@pytest.mark.parametrize("step, out, sources", [
    ("pathavg5", "sim_v3_s5_ibn_path", ["sim_v3_s5_ibn_rest", "sim_v3_s5_ibn_e2"]),
    ("ibnsoup5", "sim_v3_s5_ibn_soup", ["sim_v3_s5_ibn", "sim_v3_s5_ibn_seed1"])])
def test_an_average_step_averages_the_runs_it_names_once(tmp_path, step, out, sources):
    """The script's own bash: its training runs finished (train skips them), the average is made once."""
    (tmp_path / "research").mkdir()
    script = tmp_path / "research" / "sim_v3.sh"
    shutil.copy(ROOT / "research" / "sim_v3.sh", script)
    for run in ("sim_v3_s5_ibn", "sim_v3_s5_ibn_seed1", "sim_v3_s5_ibn_rest", "sim_v3_s5_ibn_e2"):
        (tmp_path / "runs" / run / "model").mkdir(parents=True)
        (tmp_path / "runs" / run / "model" / "ropenlp.json").write_text("{}", encoding="utf-8")
    calls, stub = tmp_path / "calls.txt", tmp_path / "ropenlp-stub"
    # records its arguments; `train average` makes the output a checkpoint, as the real command does
    stub.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n'
                    'o=""; for a; do [ "$p" = -o ] && o=$a; p=$a; done\n'
                    '[ -n "$o" ] && mkdir -p "$o" && echo "{}" > "$o/ropenlp.json"\nexit 0\n')
    stub.chmod(0o755)
    for _ in range(2):
        subprocess.run(["bash", str(script), step], env={**os.environ, "RUN": str(stub)}, check=True, cwd=tmp_path)
    assert calls.read_text(encoding="utf-8").splitlines() == [
        "train average " + " ".join(f"runs/{r}/best" for r in sources) + f" -o runs/{out}/best --overwrite"]
