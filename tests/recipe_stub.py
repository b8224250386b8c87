"""A stand-in for the ``ropenlp`` command that checks a recipe script's calls without training anything.

``RUN=stub recipes/default.sh`` runs the script's whole control flow (stages, side-by-side runs, exports,
evaluations) in seconds. Each call is appended to ``$STUB_LOG`` (JSON lines: argv and working directory) and
is checked the way the real command would check it before any work:

* ``train mlm|ner|sim CONFIG [overrides]``: the config is read with the trainer's own loader, overrides
  included (a misplaced CONFIG or an unknown key fails as it would), ``model.init`` must exist and
  ``training.data_from`` must name a checkpoint of a finished run. The run directory then gets what a finished
  run leaves: ``config.resolved.toml``, ``metrics.json``, ``model/`` and ``best/`` (with a ``ropenlp.json``),
  and ``vocab.txt``.
* ``train release --model DIR -o OUT --name NAME``: DIR must exist; OUT gets an ``encoder.json`` with NAME.
* ``train average DIR DIR ... -o OUT [--dev FILE]``: at least two checkpoints, each a finished run's
  (with its ``ropenlp.json``), and the dev files must exist; OUT gets a ``ropenlp.json`` and ``metrics.json``.
* ``train whitening --model DIR --out OUT --metrics FILE``, ``export -m DIR ... -o OUT``,
  ``evaluate ... --model DIR | --bundle DIR --out FILE``: the inputs must exist; the outputs are created.

Exit code 2 and one line on stderr on the first failed check, as the real command.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def options(args: list[str], *names: str) -> list[str]:
    """Every value given to one of ``names`` (``--x V`` or ``--x=V``)."""
    out = []
    for i, a in enumerate(args):
        key, eq, value = a.partition("=")
        if key in names:
            out.append(value if eq else (args[i + 1] if i + 1 < len(args) else fail(f"{a} needs a value")))
    return out


def need(path: str, what: str) -> None:
    if not Path(path).exists():
        fail(f"{what} {path} does not exist")


def train_run(kind: str, args: list[str]) -> None:
    from training.config import write_resolved

    if not args or args[0].startswith("--"):
        fail(f"train {kind} needs the config file first, got {args[:1]}")
    config, overrides = args[0], [a for a in args[1:] if a != "--resume"]
    if kind == "mlm":
        from training.mlm import load_mlm_config as load
    elif kind == "ner":
        from training.ner import load_ner_config as load
    else:
        from training.similarity import load_sim_config as load
    try:
        cfg = load(config, overrides)
    except (ValueError, OSError) as e:
        fail(str(e))
    if cfg.model.init:
        need(cfg.model.init, "model.init")
    if cfg.training.data_from:  # OUT/checkpoints/step-N of a run finished before this call (the stub keeps no
        # checkpoints: the run folder must hold a finished run, the name must be a checkpoint's)
        start = Path(cfg.training.data_from)
        if start.parent.name != "checkpoints" or not start.name.startswith("step-"):
            fail(f"training.data_from = {start} is not a checkpoint folder (OUT/checkpoints/step-N)")
        need(str(start.parent.parent / "model" / "ropenlp.json"), "training.data_from's finished run")
    out = Path(cfg.output.dir)
    for sub in ("model", "best"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "ropenlp.json").write_text(json.dumps({"task": kind}), encoding="utf-8")
    write_resolved(cfg, out)
    (out / "metrics.json").write_text(json.dumps({"step": 1, "best": 0.0}), encoding="utf-8")
    (out / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")


def main(argv: list[str]) -> None:
    with open(os.environ["STUB_LOG"], "a", encoding="utf-8") as f:
        f.write(json.dumps({"argv": argv, "cwd": os.getcwd()}) + "\n")
    command = argv[:2] if argv[:1] == ["train"] else argv[:1]
    args = argv[len(command):]
    if command[:1] == ["train"] and command[1] in ("mlm", "ner", "sim"):
        train_run(command[1], args)
    elif command == ["train", "release"]:
        (model,), (out,), (name,) = options(args, "--model"), options(args, "-o", "--out"), options(args, "--name")
        need(model, "--model")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "encoder.json").write_text(json.dumps({"name": name}), encoding="utf-8")
    elif command == ["train", "average"]:
        valued = {"-o", "--out", "--dev", "--format", "--threshold-grid"}
        checkpoints = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in valued)]
        if len(checkpoints) < 2:
            fail(f"averaging needs at least two checkpoints, got {len(checkpoints)}")
        for c in checkpoints:
            need(str(Path(c) / "ropenlp.json"), "checkpoint")
        for d in options(args, "--dev"):
            need(d, "--dev")
        (out,) = options(args, "-o", "--out")
        Path(out).mkdir(parents=True, exist_ok=True)
        tasks = {json.loads((Path(c) / "ropenlp.json").read_text(encoding="utf-8"))["task"] for c in checkpoints}
        if len(tasks) != 1:
            fail(f"the checkpoints are of different tasks: {sorted(tasks)}")
        (Path(out) / "ropenlp.json").write_text(json.dumps({"task": tasks.pop()}), encoding="utf-8")
        (Path(out) / "metrics.json").write_text(json.dumps({"averaged_from": checkpoints}), encoding="utf-8")
    elif command == ["train", "whitening"]:
        need(options(args, "--model")[0], "--model")
        Path(options(args, "--out")[0]).mkdir(parents=True, exist_ok=True)
        for metrics in options(args, "--metrics"):
            Path(metrics).write_text("{}", encoding="utf-8")
    elif command == ["export"]:
        for model in options(args, "-m", "--model"):
            need(model, "-m")
        Path(options(args, "-o", "--out")[0]).mkdir(parents=True, exist_ok=True)
    elif command == ["evaluate"]:
        for src in options(args, "--model", "--bundle"):
            need(src, "--model/--bundle")
        (out,) = options(args, "--out")
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("{}", encoding="utf-8")
    else:
        fail(f"the stub does not know {' '.join(command)}")


if __name__ == "__main__":
    main(sys.argv[1:])
