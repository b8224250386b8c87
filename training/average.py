"""Weight averaging of task checkpoints: a uniform "model soup" (Wortsman et al., 2022).

Fine-tunes of one task that start from the same weights (the same ``model.init`` and
``training.init_seed``) and differ only in ``training.seed`` (data order, dropout) end in one basin of
the loss; the parameter-wise mean of their weights is one model, as fast as each of them, and usually
scores at least as well as the best of them. Checkpoints that started from different weights (another
``init_seed``, another encoder) have no such guarantee: measure before you ship one.

What is checked before anything is written: every checkpoint is a task checkpoint (``ropenlp.json``)
of the same task and configuration (an NER threshold may differ: it is re-chosen), the same encoder
configuration, the same tokenizer file, and the same tensors (names, shapes, dtypes) in every weights
file. A similarity checkpoint with whitening is refused: whitening is fitted on a model's vectors, so
fit it on the average (``ropenlp train whitening``).

What a task kind chooses again is its trainer's :class:`Rechoose` rule (``RECHOOSE``, registered by the
trainer module ``training.<kind>``; NER: the threshold). Those settings of the average are the mean of the
checkpoints' unless dev data is given, in which case the rule calibrates them on it as training does (NER:
over a threshold grid, :func:`training.ner.calibrate_checkpoint`). ``metrics.json`` of the output records
the checkpoints it came from, with their dev scores.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.tasks import TASK_FILE, read_task, tokenizer_file

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class Rechoose:
    """What an average of one task kind chooses again. ``keys``: task settings (``ropenlp.json``) that may
    differ between the checkpoints (the average gets their mean); ``summary``: settings recorded per source
    and in ``metrics.json``; ``read_dev(files, format)``: dev records; ``calibrate(out, dev, grid)``: choose
    the ``keys`` on them for the checkpoint at ``out``, saving it and returning its ``metrics.json`` record."""

    keys: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()
    read_dev: Callable[[Sequence[str], str], Any] | None = None
    calibrate: Callable[[Path, Any, Sequence[float]], dict] | None = None


RECHOOSE: dict[str, Rechoose] = {}


def register_rechoose(kind: str, rule: Rechoose) -> None:
    """A trainer module's rule for averages of its kind (called when ``training.<kind>`` is imported)."""
    RECHOOSE[kind] = rule


def rechoose(kind: str) -> Rechoose:
    """The rule of ``kind``: imports its trainer module ``training.<kind>`` (which registers it) when needed;
    a kind without a trainer module or a rule has nothing to choose again."""
    if kind not in RECHOOSE:
        try:
            importlib.import_module(f"training.{kind}")
        except ModuleNotFoundError as e:
            if e.name != f"training.{kind}":
                raise
    return RECHOOSE.get(kind, Rechoose())


def _same(values: Sequence, what: str, paths: Sequence[Path]) -> None:
    for path, value in zip(paths[1:], values[1:]):
        if value != values[0]:
            keys = ""
            if isinstance(value, dict) and isinstance(values[0], dict):
                keys = " (" + ", ".join(sorted(k for k in value.keys() | values[0].keys()
                                               if value.get(k) != values[0].get(k))) + ")"
            raise ValueError(f"{path}: its {what}{keys} differs from {paths[0]}'s; only checkpoints of one task "
                             "and configuration, fine-tuned from the same start, can be averaged")


def check_averageable(paths: Sequence[str | Path]) -> tuple[list[dict], list[str]]:
    """The task settings (``ropenlp.json``) of each of ``paths`` and their common weights file names, or a
    ValueError naming the first checkpoint that differs and what differs."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("a checkpoint is listed twice (a weighted average is not what this does)")
    tasks = []
    for p in paths:
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no such checkpoint directory")
        meta = read_task(p)
        if not meta.get("task"):
            raise ValueError(f"{p}: not a task checkpoint (no {TASK_FILE}); average fine-tuned NER or similarity "
                             "checkpoints (a run's best/ or model/)")
        if (p / "whitening.safetensors").is_file():
            raise ValueError(f"{p}: has whitening, which is fitted on a model's vectors; average checkpoints "
                             "without it, then fit whitening on the average (ropenlp train whitening)")
        tasks.append(meta)
    rechosen = rechoose(tasks[0]["task"]).keys
    _same([{k: v for k, v in t.items() if k not in rechosen} for t in tasks], f"task settings ({TASK_FILE})", paths)
    _same([json.loads((p / CONFIG_FILE).read_text(encoding="utf-8")) for p in paths], f"encoder ({CONFIG_FILE})",
          paths)
    _same([tokenizer_file(p).read_bytes() for p in paths], "tokenizer", paths)
    files = [sorted(f.name for f in p.glob(f"*{WEIGHTS_SUFFIX}")) for p in paths]
    _same(files, "set of weights files", paths)
    if not files[0]:
        raise ValueError(f"{paths[0]}: no *{WEIGHTS_SUFFIX} weights")
    return tasks, files[0]


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, *, dev: Sequence[str] = (),
                        dev_format: str = "auto", threshold_grid: Sequence[float] = (),
                        overwrite: bool = False) -> dict:
    """Write the uniform average of the task checkpoints ``paths`` to ``out`` (module docstring) and return
    its record (also in ``out/metrics.json``). ``dev``: labelled dev files (in ``dev_format``) to calibrate
    the kind's rechosen settings on (NER: the threshold, over ``threshold_grid``)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    from training.data import write_json
    from training.loop import METRICS_FILE

    paths, out = [Path(p) for p in paths], Path(out)
    metas, files = check_averageable(paths)
    meta = dict(metas[0])
    if out.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"{out}: is one of the checkpoints; write the average elsewhere")
    replace = out.exists() and any(out.iterdir())
    if replace and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (--overwrite replaces it)")
    rule = rechoose(meta["task"])
    records = None
    if dev:
        if rule.calibrate is None or rule.read_dev is None:
            raise ValueError(f"dev data calibrates settings chosen on dev (an NER threshold); a {meta['task']} "
                             "average has none to calibrate")
        if not threshold_grid:
            raise ValueError("calibrating on dev data needs a threshold grid")
        records = rule.read_dev(dev, dev_format)

    averaged = {}
    for name in files:
        handles = [safe_open(str(p / name), framework="pt") for p in paths]
        keys = [sorted(h.keys()) for h in handles]
        _same(keys, f"tensor names in {name}", paths)
        tensors = {}
        for key in keys[0]:
            parts = [h.get_tensor(key) for h in handles]
            _same([(tuple(t.shape), t.dtype) for t in parts], f"shape or dtype of {name}:{key}", paths)
            if parts[0].is_floating_point():
                mean = torch.stack([t.double() for t in parts]).mean(0)
                tensors[key] = mean.to(parts[0].dtype).contiguous()
            else:  # integer buffers (position ids): equal or refused
                _same([t.tolist() for t in parts], f"values of the integer tensor {name}:{key}", paths)
                tensors[key] = parts[0].contiguous()
        averaged[name] = tensors

    if replace:  # only now that everything was checked
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, tensors in averaged.items():
        save_file(tensors, str(out / name), metadata={"format": "pt"})
    shutil.copyfile(paths[0] / CONFIG_FILE, out / CONFIG_FILE)
    tok = tokenizer_file(paths[0])
    shutil.copyfile(tok, out / tok.name)
    for name in rule.keys:
        meta[name] = sum(m[name] for m in metas) / len(metas)
    (out / TASK_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    # an object (path -> its decoding settings and dev score), so that the export keeps it in the manifest
    sources = {str(p): _summary(m, rule) | _dev_summary(p / METRICS_FILE) for p, m in zip(paths, metas)}
    record = _summary(meta, rule)
    if records is not None:  # the metrics.json a trained checkpoint has (the export copies it into the manifest)
        record = rule.calibrate(out, records, threshold_grid)
    record["averaged_from"] = sources
    write_json(out / METRICS_FILE, record)
    log.info("averaged %d checkpoints into %s", len(paths), out)
    return record


def _summary(meta: dict, rule: Rechoose) -> dict:
    return {k: meta[k] for k in rule.summary if k in meta}


def _dev_summary(path: Path) -> dict:
    """The dev scores a checkpoint's metrics.json recorded (NER F1 or mean Spearman), if any."""
    if not path.is_file():
        return {}
    m = json.loads(path.read_text(encoding="utf-8"))
    return {k: m[k] for k in ("dev_f1", "dev_spearman") if k in m}
