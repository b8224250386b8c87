"""``ropenlp export`` and ``ropenlp requantize``: thin shims over :func:`export.onnx.export_bundle` and
:func:`export.requantize.requantize_bundle`, plus where their calibration texts come from.

This module joins two sides (training's data readers, the exporter), so that ``export`` never imports
``training``. Static int8 (``-p int8``) calibrates its activation ranges on texts of the task's own
training data, read with the readers training uses:

* ``--calibration-data TASK=FILE`` (repeatable; ``FILE`` alone when the bundle has one task): NER files in
  any format ``ropenlp train ner`` reads (CLUENER / CMeEE JSON lines, a CMeEE JSON array, BIO), pair files
  (TSV / JSONL) for similarity (both sentences of each pair), plain text lines for other kinds;
* else the training data recorded by the checkpoint's run (``config.resolved.toml`` beside the checkpoint
  or in its run folder: ``data.root`` + ``data.train``), when those files are here;
* else the export fails, naming the option: it never calibrates on the parity sample.

torch, onnx and onnxruntime are imported inside the commands only, so ``ropenlp --help`` stays instant
and the serving image (no torch) can load this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from models.precisions import (
    CALIBRATION_METHODS,
    DEFAULT_CALIBRATION_METHOD,
    DEFAULT_CALIBRATION_SEED,
    DEFAULT_CALIBRATION_SIZE,
    PRECISIONS,
    REFERENCE,
    describe,
)

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.resolved.toml"  # training.config.RESOLVED_FILE

CalibrationOption = Annotated[list[str], typer.Option(
    "--calibration-data", help="Training data to calibrate static int8 on, as TASK=FILE (FILE alone for a one-task "
    "bundle); repeat for more files or tasks. Formats as `ropenlp train` reads them. Default: the training data "
    "the checkpoint's run recorded (its config.resolved.toml).")]
SizeOption = Annotated[int, typer.Option(
    "--calibration-size", help="Texts drawn (seeded) from the calibration data.", min=1)]
SeedOption = Annotated[int, typer.Option("--calibration-seed", help="Seed of the calibration draw.")]
MethodOption = Annotated[str, typer.Option(
    "--calibration-method", help=f"How activation ranges are set: {', '.join(CALIBRATION_METHODS)}.")]


# --------------------------------------------------------------------------------------------
# Calibration texts: training's readers, per task kind
# --------------------------------------------------------------------------------------------

Entries = list[tuple[list[Path], dict[str, Any]]]  # (files, reader options) per data source


def _ner_texts(entries: Entries, report) -> list[str]:
    from training.ner_data import read_ner

    return [r.text for files, opts in entries for r in read_ner(files, report, format=opts.get("format", "auto"))]


def _pair_texts(entries: Entries, report) -> list[str]:
    import dataclasses

    from training.pairs import PairSource, read_pairs

    names = {f.name for f in dataclasses.fields(PairSource)} - {"paths", "name"}
    texts = []
    for files, opts in entries:
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items() if k in names}
        for p in read_pairs([PairSource(paths=tuple(str(f) for f in files), **kw)], report):
            texts += [p.a, p.b]
    return texts


def _plain_texts(entries: Entries, report) -> list[str]:
    from training.data import TextSource, read_texts

    sources = [TextSource(paths=(str(f),), format="jsonl" if f.suffix in (".jsonl", ".json") else "lines")
               for files, _ in entries for f in files]
    return [r.text for r in read_texts(sources, report)]


# task kind -> how its training files hold texts (a kind not listed: plain text lines / JSONL "text")
TEXT_READERS: dict[str, Callable[[Entries, Any], list[str]]] = {"ner": _ner_texts, "similarity": _pair_texts}


def read_calibration_texts(task: str, entries: Entries) -> list[str]:
    """The texts of ``entries`` read as the task's training data; unreadable records are skipped (logged)."""
    from training.data import ReadReport

    report = ReadReport()
    texts = TEXT_READERS.get(task, _plain_texts)(entries, report)
    report.check("skip")
    if not texts:
        files = ", ".join(str(f) for fs, _ in entries for f in fs)
        raise ValueError(f"no {task} calibration texts could be read from {files} ({report.summary()})")
    log.info("%s calibration data: read %s", task, report.summary())
    return texts


def recorded_training_data(checkpoint: Path) -> tuple[Entries, str] | None:
    """The training files a checkpoint's run recorded (``config.resolved.toml`` beside it or in its run
    folder), as reader entries, and a description; None when no config is found. Raises ValueError when
    the config names files that are not here."""
    import tomllib

    from training.data import expand_paths

    config = next((d / RESOLVED_CONFIG for d in (checkpoint, checkpoint.parent) if (d / RESOLVED_CONFIG).is_file()),
                  None)
    if config is None:
        return None
    data = tomllib.loads(config.read_text(encoding="utf-8")).get("data", {})
    train = data.get("train") or []
    if not train:
        return None
    root = data.get("root") or "."
    # training ran with paths relative to its working directory: here, or the run folder's project
    roots = [Path(root), config.parent / root, config.parent.parent / root, config.parent.parent.parent / root]
    for base in dict.fromkeys(r for r in roots):
        try:
            entries = [(expand_paths(item["paths"] if isinstance(item, dict) else [item], root=base),
                        {k: v for k, v in item.items() if k != "paths"} if isinstance(item, dict)
                        else {"format": data.get("format", "auto")})
                       for item in train]
        except (FileNotFoundError, ValueError):
            continue
        if all(files and all(f.is_file() for f in files) for files, _ in entries):
            shown = [str(f) for files, _ in entries for f in files]
            return entries, f"{', '.join(shown)} (the training data recorded in {config})"
    raise ValueError(f"{config} records the training data {train} under {root!r}, but those files are not here: "
                     "pass --calibration-data TASK=FILE")


def calibration_for(by_task: dict[str, Path], items: Sequence[str], need: Sequence[str]):
    """``{task: CalibrationTexts}``: ``--calibration-data`` items (``TASK=FILE`` or ``FILE``) and, for the
    tasks in ``need`` without one, the training data their checkpoint recorded (``by_task``: task ->
    checkpoint). A task in ``need`` with neither is left out (the exporter names the option)."""
    from export.variants import CalibrationTexts

    files: dict[str, list[Path]] = {}
    for item in items:
        task, sep, path = item.rpartition("=")
        if not sep:
            if len(by_task) != 1:
                raise ValueError(f"--calibration-data {item!r}: name the task (TASK=FILE), the bundle has "
                                 f"{', '.join(by_task)}")
            task = next(iter(by_task))
        task = task.strip()
        if task not in by_task:
            raise ValueError(f"--calibration-data {item!r}: no {task!r} model here (tasks: {', '.join(by_task)})")
        if not Path(path).is_file():
            raise ValueError(f"--calibration-data {item!r}: {path} is not a file")
        files.setdefault(task, []).append(Path(path))
    out = {task: CalibrationTexts(", ".join(map(str, fs)), read_calibration_texts(task, [(fs, {})]))
           for task, fs in files.items()}
    for task in need:
        if task in out or by_task.get(task) is None:
            continue
        recorded = recorded_training_data(by_task[task])
        if recorded is not None:
            entries, source = recorded
            out[task] = CalibrationTexts(source, read_calibration_texts(task, entries))
            log.info("%s: calibrating on %s", task, source)
    return out


# --------------------------------------------------------------------------------------------
# ropenlp export
# --------------------------------------------------------------------------------------------


def export_command(
    model: Annotated[list[Path], typer.Option(
        "--model", "-m", help="A task checkpoint directory (its task detected from its ropenlp.json). "
        "Repeat it for a bundle with several tasks.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle directory to write.")],
    precision: Annotated[list[str], typer.Option(
        "--precision", "-p", help=f"{describe()}. Repeat or separate with commas; TASK=P for one task only "
        "(e.g. -p ner=int8 -p similarity=fp32).")] = [REFERENCE],  # noqa: B006
    calibration_data: CalibrationOption = [],  # noqa: B006
    calibration_size: SizeOption = DEFAULT_CALIBRATION_SIZE,
    calibration_seed: SeedOption = DEFAULT_CALIBRATION_SEED,
    calibration_method: MethodOption = DEFAULT_CALIBRATION_METHOD,
    sample_file: Annotated[Path | None, typer.Option(
        "--sample-file", help="Texts for the parity check: one per line, or JSONL with a \"text\" field.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Bundle name (default: the directory name).")] = None,
    data: Annotated[list[str], typer.Option(
        "--data", help="Training data for the provenance, as NAME=TERMS (e.g. 'CLUENER2020=Apache-2.0'); repeat.")] = [],  # noqa: B006
    notes: Annotated[str | None, typer.Option("--notes", help="Free text for the provenance.")] = None,
    tolerance: Annotated[float, typer.Option(
        "--tolerance", help="Largest fp32 ONNX vs PyTorch difference accepted on the sample.")] = 1e-3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at --out.")] = False,
    exporter: Annotated[str, typer.Option(
        "--exporter", help="torch.onnx exporter: legacy (TorchScript, fast) or dynamo (torch.export).")] = "legacy",
    base: Annotated[Path | None, typer.Option(
        "--base", help="Replace only the --model tasks of this bundle: its other tasks are kept as they are "
        "(graphs, settings, metrics); the checkpoints must use its tokenizer. --out may be this bundle, with "
        "--overwrite.")] = None,
) -> None:
    """Export task checkpoints to one ONNX bundle (graphs, tokenizer.json, bundle.json), parity-checked."""
    from export.onnx import ExportError
    from models.bundle import BundleError

    try:
        manifest = _run(model, out, precision, sample_file, name, data, notes, tolerance, overwrite, exporter,
                        calibration_data, calibration_size, calibration_seed, calibration_method, base)
    except (ExportError, BundleError, OSError, ValueError) as e:  # library code raises; only the shim exits
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    _show(manifest)
    typer.echo(f"wrote {out}")


def _show(manifest) -> None:
    for task, spec in manifest.tasks.items():
        for p, g in spec.graphs.items():
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.parity.items())
            q = g.quantization
            if q is not None:
                shown += (f"; {q.mode} int8, batch dependence {q.batch_dependence:.3g}" if q.batch_dependence is not None
                          else f"; {q.mode} int8")
            typer.echo(f"{task} {p}: {g.file} ({shown})")


def _run(models, out, precisions, sample_file, name, data, notes, tolerance, overwrite, exporter,
         calibration_data, calibration_size, calibration_seed, calibration_method, base=None):
    from export.onnx import ExportError, detect_task, export_bundle
    from export.parity import read_sample_file

    by_task: dict[str, Path] = {}
    for path in models:
        task = detect_task(path)
        if task in by_task:
            raise ExportError(f"two {task} checkpoints given ({by_task[task]} and {path}): "
                              "a bundle holds at most one model per task")
        by_task[task] = path
    datasets = []
    for item in data:
        dname, sep, terms = item.partition("=")
        if not sep or not dname.strip() or not terms.strip():
            raise ExportError(f"--data {item!r}: expected NAME=TERMS")
        datasets.append((dname.strip(), terms.strip()))
    wanted = _parse_precisions(precisions, list(by_task))
    per_task = wanted if isinstance(wanted, dict) else {task: wanted for task in by_task}
    need = [task for task, ps in per_task.items() if any(PRECISIONS.get(p) and PRECISIONS[p].calibrated for p in ps)]
    return export_bundle(
        out,
        by_task,
        precisions=wanted,
        sample_texts=read_sample_file(sample_file) if sample_file is not None else None,
        name=name,
        training_data=datasets,
        notes=notes,
        tolerance=tolerance,
        overwrite=overwrite,
        exporter=exporter,
        calibration=calibration_for(by_task, calibration_data, need),
        calibration_size=calibration_size,
        calibration_seed=calibration_seed,
        calibration_method=calibration_method,
        base=base,
    )


def _parse_precisions(items: list[str], tasks: list[str]) -> list[str] | dict[str, list[str]]:
    """``-p int8,fp32`` for every task; ``-p ner=int8 -p similarity=fp32`` per task (plain values then
    apply to the tasks not named)."""
    plain: list[str] = []
    per_task: dict[str, list[str]] = {}
    for value in (v.strip() for item in items for v in item.split(",") if v.strip()):
        task, sep, precision = value.rpartition("=")
        if sep:
            per_task.setdefault(task.strip(), []).append(precision.strip())
        else:
            plain.append(value)
    if not per_task:
        return plain
    return per_task | {task: plain for task in tasks if task not in per_task and plain}


# --------------------------------------------------------------------------------------------
# ropenlp requantize
# --------------------------------------------------------------------------------------------


def requantize_command(
    bundle: Annotated[Path, typer.Argument(help="A bundle with dynamic int8 graphs (format 1 / 2 int8, or int8-dynamic).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write (may be BUNDLE with --overwrite).")],
    calibration_data: CalibrationOption = [],  # noqa: B006
    calibration_size: SizeOption = DEFAULT_CALIBRATION_SIZE,
    calibration_seed: SeedOption = DEFAULT_CALIBRATION_SEED,
    calibration_method: MethodOption = DEFAULT_CALIBRATION_METHOD,
    fp32_out: Annotated[Path | None, typer.Option(
        "--fp32-out", help="Also write a bundle of the dequantized fp32 graphs (the reference to evaluate against).")] = None,
    sample_file: Annotated[Path | None, typer.Option(
        "--sample-file", help="Texts for the parity check: one per line, or JSONL with a \"text\" field.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing bundle at --out.")] = False,
) -> None:
    """Re-quantize a bundle's dynamic int8 graphs as static int8 (batch invariant), without its checkpoints:
    each graph is dequantized exactly to fp32, then calibrated on the task's training data."""
    from export.errors import ExportError
    from export.parity import read_sample_file
    from export.requantize import requantize_bundle
    from models.bundle import LEGACY_INT8, BundleError, load_manifest

    try:
        manifest = load_manifest(bundle)
        todo = {task: None for task, spec in manifest.tasks.items() if LEGACY_INT8 in spec.graphs}
        new = requantize_bundle(
            bundle, out, calibration_for(todo or dict.fromkeys(manifest.tasks), calibration_data, ()),
            size=calibration_size, seed=calibration_seed, method=calibration_method, fp32_out=fp32_out,
            sample_texts=read_sample_file(sample_file) if sample_file is not None else None, overwrite=overwrite)
    except (ExportError, BundleError, OSError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    _show(new)
    typer.echo(f"wrote {out}" + (f" and {fp32_out}" if fp32_out is not None else ""))


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command("requantize")(requantize_command)
