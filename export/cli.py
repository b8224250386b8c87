"""``ropenlp export``: a thin shim over :func:`export.onnx.export_bundle`.

torch, onnx and onnxruntime are imported inside the command only, so ``ropenlp --help`` stays instant
and the serving image (no torch) can load this module.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from models.precisions import REFERENCE, describe

log = logging.getLogger(__name__)


def export_command(
    model: Annotated[list[Path], typer.Option(
        "--model", "-m", help="A task checkpoint directory (its task detected from its ropenlp.json). "
        "Repeat it for a bundle with several tasks.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle directory to write.")],
    precision: Annotated[list[str], typer.Option(
        "--precision", "-p", help=f"{describe()}. Repeat or separate with commas; TASK=P for one task only "
        "(e.g. -p ner=int8 -p similarity=fp32).")] = [REFERENCE],  # noqa: B006
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
) -> None:
    """Export task checkpoints to one ONNX bundle (graphs, tokenizer.json, bundle.json), parity-checked."""
    from export.onnx import ExportError
    from models.bundle import BundleError

    try:
        manifest = _run(model, out, precision, sample_file, name, data, notes, tolerance, overwrite, exporter)
    except (ExportError, BundleError, OSError, ValueError) as e:  # library code raises; only the shim exits
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    for task, spec in manifest.tasks.items():
        for p, g in spec.graphs.items():
            shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in g.parity.items())
            typer.echo(f"{task} {p}: {g.file} ({shown})")
    typer.echo(f"wrote {out}")


def _run(models, out, precisions, sample_file, name, data, notes, tolerance, overwrite, exporter):
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
    return export_bundle(
        out,
        by_task,
        precisions=_parse_precisions(precisions, list(by_task)),
        sample_texts=read_sample_file(sample_file) if sample_file is not None else None,
        name=name,
        training_data=datasets,
        notes=notes,
        tolerance=tolerance,
        overwrite=overwrite,
        exporter=exporter,
    )


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)


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
