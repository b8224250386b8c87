"""``ropenlp serve`` and ``ropenlp score``: thin shims over :func:`run_server` and :func:`service.score.score`.

The flags are generated from :class:`service.settings.Settings` (one ``--flag`` per field, e.g.
``--batch-tokens`` for ``batch_tokens`` / ``ROPENLP_BATCH_TOKENS``), so flags, environment variables
and settings cannot drift apart. A flag given wins over its variable; a flag not given leaves it.
"""

from __future__ import annotations

import enum
import inspect
import logging
import types
import typing
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from service.settings import DEFAULT_BUNDLE, Settings, SettingsError, shipped_bundles

log = logging.getLogger(__name__)


class NoBundle(RuntimeError):
    pass


def require_bundle(settings: Settings) -> None:
    """A clear error before anything loads when no bundle is given and none is installed."""
    if settings.bundle is None and not (DEFAULT_BUNDLE / "bundle.json").is_file():
        raise NoBundle(
            f"no bundle given and the default bundle is not installed ({DEFAULT_BUNDLE} has no bundle.json): "
            "pass --bundle DIR or set ROPENLP_BUNDLE=DIR (a directory written by `ropenlp export`)"
        )
    if settings.bundle is not None and not settings.bundle_dir.is_dir():
        shipped = ", ".join(shipped_bundles()) or "none installed"
        raise NoBundle(
            f"bundle directory {settings.bundle} does not exist, and it is not the name of a bundle shipped "
            f"with ropenlp ({shipped})"
        )


def run_server(settings: Settings, engine=None) -> None:
    """Load the engine (clear errors before anything listens), then serve it with uvicorn, 1 worker.

    SIGTERM: the socket closes, in-flight requests get ``drain_s`` seconds to finish (then they are
    cancelled), the batcher waits at most ``drain_s`` for the model call then running, and the process
    exits by the signal (status 143). ``engine``: one already loaded (tests serve a fake one)."""
    import uvicorn

    from service.core import Engine
    from service.http import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    require_bundle(settings)
    public = settings.public()
    log.info("settings: %s", " ".join(f"{k}={v}" for k, v in public.items()), extra={"settings": public})
    if settings.ray_replicas > 0:  # the same app as replicas on Ray Serve
        from service.serve_ray import run

        run(settings)
        return
    if engine is None:
        engine = Engine.from_settings(settings)
    uvicorn.run(
        create_app(settings, engine=engine),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,  # ours is in service.http (JSON, with route and timings)
        server_header=False,
        timeout_graceful_shutdown=settings.drain_s,
    )


def _flag_type(annotation: object) -> type:
    """The CLI type of a settings field: Optional stripped; Literal / SecretStr as str (pydantic validates)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (bool, int, float, Path):
        return annotation
    return str


def _settings_params(names: typing.Iterable[str], panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword-only ``--flag`` per settings field (default None: not given, the variable or default stands)."""
    params = []
    for name in names:
        field = Settings.model_fields[name]
        kind = _flag_type(field.annotation)
        flag = "--" + name.replace("_", "-")
        decls = [f"{flag}/--no-{name.replace('_', '-')}"] if kind is bool else [flag]
        choices = [a for a in typing.get_args(field.annotation) if a is not type(None)]
        if typing.get_origin(choices[0] if choices else None) is typing.Literal:
            choices = typing.get_args(choices[0])
        elif typing.get_origin(field.annotation) is not typing.Literal:
            choices = []
        default = "unset" if field.default is None else field.default
        help_ = (field.description or name.replace("_", " ")) + (
            f" (one of {', '.join(map(str, choices))})" if choices else ""
        )
        help_ += f"; env {Settings.env_name(name)}, default: {default}"
        option = typer.Option(None, *decls, help=help_, show_default=False, rich_help_panel=panel)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)
        )
    return params


def _startup_error(e: Exception) -> None:
    """Settings / bundle / provider problems at start-up: a message and exit 2, not a traceback."""
    from models.bundle import BundleError
    from service.runtime import ProviderUnavailable

    if isinstance(e, (SettingsError, NoBundle, BundleError, ProviderUnavailable, ValueError)):
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    raise e


def _serve_command() -> typing.Callable[..., None]:
    def serve(**flags: object) -> None:
        """Serve a bundle over HTTP: /ner, /similarity, /embed, /health, /ready, /info, /metrics, /schema."""
        try:
            run_server(Settings.from_env(**flags))
        except Exception as e:  # noqa: BLE001 (re-raised unless a start-up problem)
            _startup_error(e)

    serve.__signature__ = inspect.Signature(_settings_params(Settings.model_fields))  # typer reads the flags
    return serve


# -- ropenlp score ------------------------------------------------------------------------------

# The settings that matter to batch scoring (the model, threads, batching, limits); same names,
# variables and defaults as for `serve`.
SCORE_SETTINGS = (
    "bundle", "provider", "allow_cpu_fallback", "precision", "intra_op_threads", "inter_op_threads",
    "ner_max_length", "ner_stride", "lexicon", "normalize", "batch_tokens", "max_chars", "max_entities", "threshold_min", "threshold_max",
)  # fmt: skip

SCORE_EPILOG = """Exit codes:
0 done (error lines, if any, are counted in the summary);
1 stopped: more error lines than --max-errors;
2 usage, settings or bundle error, or --resume refused;
3 input / output error;
4 unexpected failure (a bug);
130 interrupted (Ctrl-C, SIGTERM).
After 1, 3, 4, 130 or kill -9: rerun with the same arguments and --resume."""


class InputFormat(str, enum.Enum):
    jsonl = "jsonl"
    csv = "csv"
    tsv = "tsv"
    text = "text"
    parquet = "parquet"


RAY_LOCAL = "local"  # `--ray` given without an address
SCALING_PANEL = "Scaling out (docs/scaling.md)"


def with_ray_default(args: list[str]) -> list[str]:
    """``--ray [ADDRESS]``, an option whose value may be left out (typer has none): a bare ``--ray``
    (last, or before another option) gets :data:`RAY_LOCAL`."""
    args = list(args)
    for k, arg in enumerate(args):
        if arg == "--":
            break
        if arg == "--ray" and (k + 1 == len(args) or args[k + 1].startswith("-")):
            args.insert(k + 1, RAY_LOCAL)
            break
    return args


class _ScoreCommand(TyperCommand):
    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, with_ray_default(args))


class ProgressMode(str, enum.Enum):
    auto = "auto"
    bar = "bar"
    log = "log"
    none = "none"


def _score(
    task: Annotated[
        str, typer.Argument(metavar="OPERATION", help="What to compute (see below); the bundle must have its task.")
    ],
    *,
    input: Annotated[
        str, typer.Option("--input", "-i", help="JSONL, CSV, TSV, plain text or Parquet file; - for stdin.")
    ],
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="JSONL, one line per input record (*.parquet: Parquet); - for stdout."),
    ],
    format: Annotated[
        InputFormat | None,
        typer.Option(
            "--format", "-f", help="Default: from the extension (.jsonl .ndjson .csv .tsv .tab .txt .parquet)."
        ),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option(
            help="ner / embed: JSON key, CSV/TSV column name, or 0-based index without a header. "
            "Default: text (0)."
        ),
    ] = None,
    a_field: Annotated[
        str | None, typer.Option(help="similarity: first text of a pair. Default: a (0).")
    ] = None,
    b_field: Annotated[
        str | None, typer.Option(help="similarity: second text of a pair. Default: b (1).")
    ] = None,
    id_field: Annotated[
        str | None, typer.Option(help='Copied to each output line as "id" (always there: "line").')
    ] = None,
    header: Annotated[
        bool | None, typer.Option("--header/--no-header", help="csv / tsv: the first line names the columns.")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="ner: span score threshold. Default: the bundle's.")
    ] = None,
    decode: Annotated[
        str | None,
        typer.Option(
            metavar="nested|flat",
            help="ner: nested (every span above the threshold) or flat (greedy non-overlapping spans). "
            "Default: the bundle's.",
        ),
    ] = None,
    window: Annotated[
        int, typer.Option(min=1, help="Records read at a time, length-sorted into batches (bounds memory).")
    ] = 4096,
    max_errors: Annotated[
        int | None, typer.Option(min=0, help="Stop (exit 1) once more error lines than this are written.")
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Go on after an interrupted run (same arguments, unchanged input)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output and its state.")
    ] = False,
    npy: Annotated[
        str | None,
        typer.Option(
            help="embed: also write the vectors to this float32 .npy (row k = output line k; NaN row = "
            "error line)."
        ),
    ] = None,
    vectors: Annotated[
        bool | None,
        typer.Option(
            "--vectors/--no-vectors", help="embed: vectors in the JSONL lines (default: unless --npy)."
        ),
    ] = None,
    fsync_interval: Annotated[
        float,
        typer.Option(
            min=0, help="Seconds between checkpoints (fsync + state); 0: every window; always at exit."
        ),
    ] = 5.0,
    progress: Annotated[
        ProgressMode,
        typer.Option(
            help="auto: a bar when stderr is a terminal, else a log line every --log-interval seconds."
        ),
    ] = ProgressMode.auto,
    log_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between progress log lines.")] = 30.0,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="[ADDRESS]",
            help="Run the model on Ray Data actors (pip install 'ropenlp[ray]'): no ADDRESS starts or joins a "
            "local cluster, auto joins the running one, ray://HOST:10001 a remote one. Same output bytes.",
            rich_help_panel=SCALING_PANEL,
        ),
    ] = None,
    actors: Annotated[
        int,
        typer.Option(min=1, help="--ray: scoring actors (one bundle each).", rich_help_panel=SCALING_PANEL),
    ] = 1,
    threads_per_actor: Annotated[
        int,
        typer.Option(
            min=1,
            help="--ray: CPUs each actor reserves = its ONNX Runtime intra-op threads.",
            rich_help_panel=SCALING_PANEL,
        ),
    ] = 1,
    **flags: object,
) -> None:
    """Score a JSONL / CSV / TSV / text / Parquet file, streaming: one output line per input record, in
    input order; bad records get error lines; resumable after a crash (--resume). An output named
    *.parquet is written as Parquet. --ray runs the same scoring on Ray Data actors."""
    import signal

    from service.score import ScoreError, ScoreOptions, Stopped, make_progress, score
    from service.score.options import operation

    try:
        operation(task)
    except ScoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    options = ScoreOptions(
        task=task, input=input, output=output, format=format.value if format else None,
        text_field=text_field, a_field=a_field, b_field=b_field, id_field=id_field, header=header,
        threshold=threshold, decode=decode, window=window, max_errors=max_errors, resume=resume,
        overwrite=overwrite, npy=npy, vectors=vectors, fsync_interval=fsync_interval,
    )  # fmt: skip
    if ray is None and (actors != 1 or threads_per_actor != 1):
        typer.echo("error: --actors and --threads-per-actor are for --ray", err=True)
        raise typer.Exit(2)
    try:
        settings = Settings.from_env(**flags)
        require_bundle(settings)
        from service.core import Engine

        engine = Engine.from_settings(settings) if ray is None else None  # --ray: loaded by score_ray
    except Exception as e:  # noqa: BLE001 (re-raised unless a start-up problem)
        _startup_error(e)

    def terminate(signum, frame):  # SIGTERM as Ctrl-C: checkpoint, then exit 130
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    bar = make_progress(progress.value, interval=log_interval)
    try:
        if ray is None:
            summary = score(engine, options, progress=bar)
        else:
            from service.score.ray import RayOptions, score_ray

            address = None if ray == RAY_LOCAL else ray
            summary = score_ray(settings, options, RayOptions(address, actors, threads_per_actor), progress=bar)
    except Stopped as e:
        typer.echo(e.summary.line(), err=True)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except ScoreError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    except Exception:  # a bug: the trace for the report, and an exit code of its own (1 means --max-errors)
        log.exception("score failed unexpectedly; what was written is checkpointed (--resume goes on)")
        raise typer.Exit(4) from None
    typer.echo(summary.line(), err=True)


def _score_command() -> typing.Callable[..., None]:
    """``_score``'s own parameters (annotations resolved: typer reads a replaced signature as it is)
    followed by the settings flags."""
    from service.tasks import scorable

    ops = "; ".join(f"{name}: {op.score.help}" for name, op in scorable().items())
    _score.__doc__ = (_score.__doc__ or "").split("\n\n    OPERATION")[0] + f"\n\n    OPERATION: {ops}."
    hints = typing.get_type_hints(_score, include_extras=True)
    own = [
        p.replace(annotation=hints[name])
        for name, p in inspect.signature(_score).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    settings = _settings_params(SCORE_SETTINGS, panel="Model and batching (as for serve)")
    _score.__signature__ = inspect.Signature([*own, *settings])
    return _score


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve a model bundle over HTTP (Litestar + uvicorn, 1 worker).")(
        _serve_command()
    )
    # `ropenlp score` calls core directly (service.score -> Engine), never HTTP.
    app.command("score", epilog=SCORE_EPILOG, cls=_ScoreCommand)(_score_command())
