"""``ropenlp train ...``: thin shims over plain functions (the tests and the Python API call those).

Library code raises; only these shims turn an error into a message and a non-zero exit code.
torch is imported inside the commands, so ``ropenlp --help`` stays instant and torch-free.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import Annotated

import typer

log = logging.getLogger(__name__)

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
OVERRIDES_HELP = "Overrides: --section.key VALUE or --set section.key=VALUE (values are TOML literals)."


@contextmanager
def _user_errors():
    """Expected failures (bad config, data, paths) -> one line on stderr and exit code 2."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo("interrupted: rerun the same command with --resume to continue from the last checkpoint",
                   err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (ValueError, OSError, ArithmeticError) as e:  # ConfigError, DataError, checkpoint mismatch, ...
        log.debug("failed", exc_info=True)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_ERROR) from None


def vocab(
    inputs: Annotated[list[str] | None, typer.Argument(help="Plain-text files or globs.")] = None,
    input_: Annotated[list[str] | None, typer.Option("--input", "-i", help="Repeatable.")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write vocab.txt.")] = "vocab.txt",
    min_count: Annotated[int, typer.Option(help="Leave out pieces seen fewer times.")] = 5,
    max_size: Annotated[int, typer.Option(help="At most this many tokens, specials included.")] = 8000,
    heldout: Annotated[list[str] | None, typer.Option(help="Files to measure the [UNK] rate on.")] = None,
    lowercase: Annotated[bool, typer.Option("--lowercase/--cased", help="As the tokenizer will.")] = True,
    on_error: Annotated[str, typer.Option(help="Unreadable lines: raise, or skip (and report).")] = "raise",
) -> None:
    """Build a character-level vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK], then pieces by frequency)."""
    from training.vocab import build_vocab_file

    files = [*(inputs or []), *(input_ or [])]
    if not files:
        typer.echo("error: give at least one input file or glob", err=True)
        raise typer.Exit(EXIT_ERROR)
    with _user_errors():
        path, rate = build_vocab_file(files, out, min_count=min_count, max_size=max_size,
                                      heldout=heldout or (), lowercase=lowercase, on_error=on_error)
    typer.echo(f"wrote {path}" + (f"; held-out {rate}" if rate else ""))


def _config_command(run: Callable[..., object]):
    """A ``CONFIG.toml [overrides] [--resume]`` command around ``run(cfg_path, overrides, resume)``."""

    def command(
        ctx: typer.Context,
        config: Annotated[str, typer.Argument(help="The run's TOML config.")],
        resume: Annotated[bool, typer.Option(help="Continue from output.dir's last checkpoint.")] = False,
        set_: Annotated[list[str] | None, typer.Option("--set", help="section.key=VALUE (repeat).")] = None,
        device: Annotated[str | None, typer.Option(help="Shortcut: --training.device (cpu, cuda).")] = None,
        threads: Annotated[int | None, typer.Option(help="Shortcut for --training.threads.")] = None,
    ) -> None:
        words = [w for kv in set_ or [] for w in ("--set", kv)] + list(ctx.args)
        if device is not None:
            words += ["--training.device", device]
        if threads is not None:
            words += ["--training.threads", str(threads)]
        with _user_errors():
            run(config, words, resume)

    command.__doc__ = run.__doc__
    return command


def _mlm(config: str, overrides: list[str], resume: bool) -> None:
    """Masked-LM pre-training of a RoFormer encoder, from scratch or from model.init."""
    from training.mlm import load_mlm_config, train_mlm

    result = train_mlm(load_mlm_config(config, overrides), resume=resume)
    held = f"; held-out {result.last_eval}" if result.last_eval else ""
    typer.echo(f"finished at step {result.step}{held}")


def _ner(config: str, overrides: list[str], resume: bool) -> None:
    """NER fine-tuning (GlobalPointer / Efficient GlobalPointer head), nested or flat."""
    from training.ner import load_ner_config, train_ner

    result = train_ner(load_ner_config(config, overrides), resume=resume)
    typer.echo(f"finished at step {result.step}; best dev f1 {result.best}" if result.best is not None
               else f"finished at step {result.step}")


def _sim(config: str, overrides: list[str], resume: bool) -> None:
    """Sentence-similarity fine-tuning (CoSENT, optional in-batch contrastive loss)."""
    from training.similarity import load_sim_config, train_sim

    result = train_sim(load_sim_config(config, overrides), resume=resume)
    typer.echo(f"finished at step {result.step}; best dev spearman {result.best}" if result.best is not None
               else f"finished at step {result.step}")


def _ints(text: str | None) -> list[int] | None:
    try:
        return [int(x) for x in text.split(",") if x.strip()] if text else None
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _fits(specs: list[str] | None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in specs or []:
        name, eq, files = spec.partition("=")
        if not eq or not name.strip() or not files.strip():
            raise typer.BadParameter(f"--fit takes NAME=FILE[,FILE...], got {spec!r}")
        out.setdefault(name.strip(), []).extend(f for f in files.split(",") if f.strip())
    return out


def whitening(
    model: Annotated[str, typer.Option(help="Similarity checkpoint (or HF RoFormer folder).")],
    sentences: Annotated[list[str] | None, typer.Option(help="Sentence files (repeat): .txt lines, .tsv columns, "
                                                             ".jsonl field text.")] = None,
    fit: Annotated[list[str] | None, typer.Option(help="A named fit set NAME=FILE[,FILE...] (repeat; globs are "
                                                       "not expanded): each set is fitted and scored.")] = None,
    eval_: Annotated[list[str] | None, typer.Option("--eval", help="Dev pair files to score each setting on.")] = None,
    k: Annotated[str | None, typer.Option("--k", help="Candidate k, e.g. 64,128,256 (default: a range up "
                                                      "to the dimension; the dimension and the JL estimate are "
                                                      "always added).")] = None,
    choose: Annotated[str | None, typer.Option(help="Store this setting instead of the best by dev Spearman: "
                                                    "none, K (of the first set) or NAME/k=K.")] = None,
    max_sentences: Annotated[int, typer.Option(help="At most this many sentences per file or glob (a seeded sample; "
                                                    "0 = all).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the samples.")] = 0,
    out: Annotated[str | None, typer.Option(help="Write the whitened checkpoint here (default: --model).")] = None,
    columns: Annotated[str, typer.Option(help="TSV sentence files: the text columns.")] = "0,1",
    metrics: Annotated[str | None, typer.Option(help="Also write the metrics JSON (the table) here.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda.")] = "cpu",
    batch_tokens: Annotated[int, typer.Option(help="Padded tokens per batch.")] = 8192,
) -> None:
    """Fit BERT-whitening on pooled vectors, score each fit set and k (and none) on dev pairs, store the best."""
    from training.whitening import fit_whitening_run

    with _user_errors():
        result = fit_whitening_run(model, sentences or (), fits=_fits(fit), eval_files=eval_ or (), ks=_ints(k),
                                   choose=choose, out=out, columns=_ints(columns) or (0, 1), device=device,
                                   batch_tokens=batch_tokens, metrics_path=metrics, max_sentences=max_sentences,
                                   seed=seed)
    best = result["chosen_mean_spearman"]
    what = "no whitening" if result["k"] is None else f"whitening {result['choice']}"
    typer.echo(f"{what} stored in {out or model}"
               + (f"; mean dev spearman {best:.2f} (unwhitened {result['unwhitened_mean_spearman']:.2f})"
                  if best is not None else ""))


def release(
    model: Annotated[str, typer.Option(help="A pre-training run's model/ folder (MLM or ELECTRA).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The release folder to write.")],
    name: Annotated[str, typer.Option(help="The encoder's name (in its card and record).")],
    dtype: Annotated[str, typer.Option(help="Weights: fp16 (half the size), fp32, bf16.")] = "fp16",
    terms: Annotated[str, typer.Option(help="The terms of the pre-training data, for the card.")] = "",
    notes: Annotated[str, typer.Option(help="A paragraph for the card.")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Make a pre-trained encoder a shippable Hugging Face RoFormer folder (+ what a next stage needs)."""
    from training.release import release_encoder

    with _user_errors():
        record = release_encoder(model, out, name=name, dtype=dtype, data_terms=terms, notes=notes,
                                 overwrite=overwrite)
    typer.echo(f"wrote {out} ({record['weights_bytes'] / 1e6:.1f} MB of {dtype} weights)")


def average(
    checkpoints: Annotated[list[str], typer.Argument(help="Task checkpoints (a run's best/ or model/): two or more "
                                                   "fine-tunes of one task from the same start.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The checkpoint folder to write.")],
    dev: Annotated[list[str] | None, typer.Option(help="NER: labelled dev file(s) to calibrate the threshold on "
                                                  "(repeat); without, the mean of the checkpoints'.")] = None,
    format: Annotated[str, typer.Option(help="Format of --dev: auto, cluener, cmeee, spans, bio, bioes.")] = "auto",
    threshold_grid: Annotated[str, typer.Option(metavar="T1,T2,...", help="Thresholds tried on --dev.")]
    = "-1,-0.5,-0.25,0,0.25,0.5,1",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Average the weights of fine-tuned checkpoints (a model soup): same task, settings and start
    (model.init, training.init_seed), different seeds."""
    from training.average import average_checkpoints

    with _user_errors():
        grid = [float(t) for t in threshold_grid.split(",") if t.strip()]
        record = average_checkpoints(checkpoints, out, dev=dev or (), dev_format=format, threshold_grid=grid,
                                     overwrite=overwrite)
    typer.echo(f"wrote {out}: the mean of {len(checkpoints)} checkpoints"
               + (f"; threshold {record['threshold']:g}, dev F1 {100 * record['dev_f1']:.2f}" if dev else ""))


def register(app: typer.Typer) -> None:
    train = typer.Typer(name="train", no_args_is_help=True,
                        help="Train: vocabulary, MLM pre-training, NER, similarity, whitening.")
    train.command("vocab")(vocab)
    extra = {"allow_extra_args": True, "ignore_unknown_options": True}
    train.command("mlm", context_settings=extra, epilog=OVERRIDES_HELP)(_config_command(_mlm))
    train.command("ner", context_settings=extra, epilog=OVERRIDES_HELP)(_config_command(_ner))
    train.command("sim", context_settings=extra, epilog=OVERRIDES_HELP)(_config_command(_sim))
    train.command("whitening")(whitening)
    train.command("release")(release)
    train.command("average")(average)
    app.add_typer(train, name="train")
    # `ropenlp evaluate` (checkpoints and bundles) is in ropenlp.evaluate: it needs the service's engine
