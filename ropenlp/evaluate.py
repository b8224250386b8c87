"""``ropenlp evaluate ner|sim``: score a PyTorch task checkpoint, or an ONNX bundle through the service's
own :class:`service.core.Engine`, on any labelled file, with the same metric code (``training.evaluate``).

This module joins the two sides (training's metrics, the service's engine), so that ``training`` never
imports ``service``: read top to bottom, the bundle predictors -> :func:`evaluate_ner` /
:func:`evaluate_sim` (checkpoint or bundle) -> the CLI commands (thin shims).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from training.cli import EXIT_ERROR, _user_errors

UNLIMITED = 1 << 40


# --------------------------------------------------------------------------------------------
# A bundle as a predictor (training.evaluate.NerPredictor / SimPredictor)
# --------------------------------------------------------------------------------------------


def _engine(bundle: str | Path, *, batch_tokens: int, precision: str | None, threads: int = 0,
            normalize: str | None = None):
    from models.normalize import Normalize
    from service.core import Engine, Limits
    from service.settings import resolve_bundle

    limits = Limits(max_items=UNLIMITED, max_chars=UNLIMITED, max_entities=UNLIMITED, batch_tokens=batch_tokens)
    return Engine.load(resolve_bundle(bundle), limits=limits, precision=precision, provider="cpu",
                       intra_op_threads=threads, inter_op_threads=1,
                       normalize=None if normalize is None else Normalize.parse(normalize))


class NerBundle:
    """A bundle's NER graph through the engine (the same windows and merge as a checkpoint)."""

    def __init__(self, bundle: str | Path, *, batch_tokens: int = 8192, precision: str | None = None,
                 threads: int = 0, normalize: str | None = None) -> None:
        self.engine = _engine(bundle, batch_tokens=batch_tokens, precision=precision, threads=threads,
                              normalize=normalize)
        ner = self.engine.task("ner")
        self.tokenizer, self.labels = self.engine.tokenizer, ner.spec.labels
        self.max_length, self.stride = ner.max_length, ner.stride
        self.threshold, self.decode = ner.spec.threshold, ner.spec.decode
        self.source = {"bundle": str(bundle), "graph_precision": self.engine.runtime.precision.get("ner"),
                       "normalize": self.engine.normalize.describe()}

    def entities(self, texts: Sequence[str], threshold: float) -> list[list]:
        self.source["tokens"] = token_stats(self.engine.tokenizer, texts)
        return self.engine.run("ner", texts=list(texts), threshold=threshold, decode="nested").entities


def token_stats(tokenizer, texts: Sequence[str]) -> dict:
    """How many content tokens the texts make and how many of them are [UNK] (after the normalisation)."""
    import numpy as np

    ids = tokenizer.encode_ids(list(texts))
    total = sum(len(i) - 2 for i in ids)  # [CLS] and [SEP] left out
    unk = int(sum(np.count_nonzero(i == tokenizer.unk_id) for i in ids))
    return {"total": total, "unk": unk, "unk_rate": unk / max(total, 1)}


class SimBundle:
    def __init__(self, bundle: str | Path, *, batch_tokens: int = 8192, precision: str | None = None,
                 threads: int = 0, normalize: str | None = None) -> None:
        self.engine = _engine(bundle, batch_tokens=batch_tokens, precision=precision, threads=threads,
                              normalize=normalize)
        self.engine.task("similarity")
        self.source = {"bundle": str(bundle), "graph_precision": self.engine.runtime.precision.get("similarity")}

    def cosines(self, pairs) -> list[float]:
        return self.engine.run("similarity", pairs=[(p.a, p.b) for p in pairs]).scores


def _evaluate(run, predictor, data, *, model, bundle, precision, batch_tokens, threads, normalize=None, **kw) -> dict:
    if (model is None) == (bundle is None):
        raise ValueError("give exactly one of --model (a PyTorch checkpoint) or --bundle (an ONNX bundle)")
    if normalize is not None and bundle is None:
        raise ValueError("--normalize overrides a bundle's normalisation: give --bundle (a checkpoint applies its own)")
    p = None if bundle is None else predictor(bundle, batch_tokens=batch_tokens, precision=precision, threads=threads,
                                              normalize=normalize)
    return run(data, model=model, predictor=p, batch_tokens=batch_tokens, threads=threads, **kw)


def evaluate_ner(data: Sequence[str], *, model: str | Path | None = None, bundle: str | Path | None = None,
                 precision: str | None = None, batch_tokens: int = 8192, threads: int = 0,
                 normalize: str | None = None, **kw) -> dict:
    """:func:`training.evaluate.evaluate_ner` of a checkpoint (``model``) or a ``bundle`` (a directory or
    a shipped bundle's name; ``precision``: its graph variant; ``normalize``: none | width | t2s |
    width,t2s instead of the manifest's). A bundle's result also counts tokens and [UNK] (``tokens``)."""
    from training import evaluate as ev

    return _evaluate(ev.evaluate_ner, NerBundle, data, model=model, bundle=bundle, precision=precision,
                     batch_tokens=batch_tokens, threads=threads, normalize=normalize, **kw)


def evaluate_sim(data: Sequence[str], *, model: str | Path | None = None, bundle: str | Path | None = None,
                 precision: str | None = None, batch_tokens: int = 8192, threads: int = 0, **kw) -> dict:
    """:func:`training.evaluate.evaluate_sim` of a checkpoint (``model``) or a ``bundle``."""
    from training import evaluate as ev

    return _evaluate(ev.evaluate_sim, SimBundle, data, model=model, bundle=bundle, precision=precision,
                     batch_tokens=batch_tokens, threads=threads, **kw)


# --------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------

Model = Annotated[str | None, typer.Option(help="PyTorch task checkpoint.")]
Data = Annotated[list[str] | None, typer.Option(help="Labelled file(s) (repeat).")]
Out = Annotated[str | None, typer.Option(help="Write the metrics JSON here.")]
Bundle = Annotated[str | None, typer.Option(help="An ONNX bundle directory, or the name of a shipped bundle "
                                                 "(default, medical), instead of --model.")]
Precision = Annotated[str | None, typer.Option(help="Bundle graph variant (default: the CPU's preferred one).")]
Device = Annotated[str, typer.Option(help="cpu, cuda (--model only).")]
BatchTokens = Annotated[int, typer.Option(help="Padded tokens per batch.")]
Threads = Annotated[int, typer.Option(help="CPU threads (0 = default).")]
Normalization = Annotated[str | None, typer.Option(
    "--normalize", metavar="none|width|t2s|width,t2s",
    help="Text normalisation before the tokenizer, instead of the bundle's manifest (--bundle only).")]


def _finish(metrics: dict, table, out: str | None) -> None:
    from rich.console import Console

    from training.data import write_json

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json(out, metrics)
    Console().print(table)
    if out:
        typer.echo(f"wrote {out}")


def _need_data(data: list[str] | None) -> None:
    if not data:
        typer.echo("error: give at least one --data file", err=True)
        raise typer.Exit(EXIT_ERROR)


def evaluate_ner_command(
    model: Model = None,
    data: Data = None,
    format: Annotated[str, typer.Option(help="auto, cluener, cmeee, spans, bio, bioes.")] = "auto",
    out: Out = None,
    bundle: Bundle = None,
    precision: Precision = None,
    threshold: Annotated[float | None, typer.Option(help="Decoding threshold (default: the model's).")] = None,
    decode: Annotated[str | None, typer.Option(
        metavar="nested|flat", help="nested (every span above the threshold) or flat (greedy non-overlapping "
                                    "spans); default: the model's / bundle's.")] = None,
    threshold_grid: Annotated[str | None, typer.Option(
        metavar="T1,T2,...", help="Score every threshold of the list and report the best (tuned on this data: "
                                  "for comparing models, each at its best).")] = None,
    device: Device = "cpu",
    batch_tokens: BatchTokens = 8192,
    threads: Threads = 0,
    normalize: Normalization = None,
) -> None:
    """Exact-span P/R/F1 (micro, per type, nested only) of an NER checkpoint or bundle."""
    from training import evaluate as ev

    _need_data(data)
    with _user_errors():
        grid = None
        if threshold_grid is not None:
            try:
                grid = [float(t) for t in threshold_grid.split(",") if t.strip()]
            except ValueError:
                raise ValueError(f"--threshold-grid must be numbers separated by commas, got "
                                 f"{threshold_grid!r}") from None
        metrics = evaluate_ner(data, model=model, bundle=bundle, format=format, threshold=threshold, decode=decode,
                               device=device, batch_tokens=batch_tokens, precision=precision, threads=threads,
                               threshold_grid=grid, normalize=normalize)
    _finish(metrics, ev.ner_table(metrics), out)


def evaluate_sim_command(
    model: Model = None,
    data: Data = None,
    format: Annotated[str, typer.Option(help="auto, tsv, jsonl.")] = "auto",
    out: Out = None,
    bundle: Bundle = None,
    precision: Precision = None,
    device: Device = "cpu",
    batch_tokens: BatchTokens = 8192,
    threads: Threads = 0,
) -> None:
    """Spearman / Pearson x100 per pair file of a similarity checkpoint or bundle."""
    from training import evaluate as ev

    _need_data(data)
    with _user_errors():
        metrics = evaluate_sim(data, model=model, bundle=bundle, format=format, device=device,
                               batch_tokens=batch_tokens, precision=precision, threads=threads)
    _finish(metrics, ev.sim_table(metrics), out)


def register(app: typer.Typer) -> None:
    evaluate = typer.Typer(name="evaluate", no_args_is_help=True,
                           help="Score a task checkpoint or ONNX bundle on labelled data.")
    evaluate.command("ner")(evaluate_ner_command)
    evaluate.command("sim")(evaluate_sim_command)
    app.add_typer(evaluate, name="evaluate")
