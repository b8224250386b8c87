"""``ropenlp serve``: a thin shim over :func:`run_server`.

The flags are generated from :class:`service.settings.Settings` (one ``--flag`` per field, e.g.
``--batch-tokens`` for ``batch_tokens`` / ``ROPENLP_BATCH_TOKENS``), so flags, environment variables
and settings cannot drift apart. A flag given wins over its variable; a flag not given leaves it.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from pathlib import Path

import typer

from service.settings import DEFAULT_BUNDLE, Settings, SettingsError

log = logging.getLogger(__name__)


class NoBundle(RuntimeError):
    pass


def run_server(settings: Settings) -> None:
    """Load the engine (clear errors before anything listens), then serve it with uvicorn, 1 worker."""
    import uvicorn

    from service.core import Engine
    from service.http import create_app
    from service.logs import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    if settings.bundle is None and not (DEFAULT_BUNDLE / "bundle.json").is_file():
        raise NoBundle(
            f"no bundle given and the default bundle is not installed ({DEFAULT_BUNDLE} has no bundle.json): "
            "pass --bundle DIR or set ROPENLP_BUNDLE=DIR (a directory written by `ropenlp export`)"
        )
    public = settings.public()
    log.info("settings: %s", " ".join(f"{k}={v}" for k, v in public.items()), extra={"settings": public})
    engine = Engine.from_settings(settings)
    uvicorn.run(
        create_app(settings, engine=engine),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        access_log=False,  # ours is in service.http (JSON, with route and timings)
        server_header=False,
        timeout_graceful_shutdown=10,
    )


def _flag_type(annotation: object) -> type:
    """The CLI type of a settings field: Optional stripped; Literal / SecretStr as str (pydantic validates)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if annotation in (bool, int, float, Path):
        return annotation
    return str


def _serve_command() -> typing.Callable[..., None]:
    params = []
    for name, field in Settings.model_fields.items():
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
        option = typer.Option(None, *decls, help=help_, show_default=False)
        params.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind | None)
        )

    def serve(**flags: object) -> None:
        """Serve a bundle over HTTP: /ner, /similarity, /embed, /health, /ready, /info, /metrics, /schema."""
        try:
            run_server(Settings.from_env(**flags))
        except (SettingsError, NoBundle) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except Exception as e:  # bundle / provider problems at start-up: a message, not a traceback
            from models.bundle import BundleError
            from service.runtime import ProviderUnavailable

            if isinstance(e, (BundleError, ProviderUnavailable, ValueError)):
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None
            raise

    serve.__signature__ = inspect.Signature(params)  # typer reads the flags from here
    return serve


def register(app: typer.Typer) -> None:
    app.command("serve", help="Serve a model bundle over HTTP (Litestar + uvicorn, 1 worker).")(
        _serve_command()
    )
    # `ropenlp score` (batch scoring of JSONL/CSV/TSV, a later issue) registers here as well. It
    # builds `service.core.Engine.from_settings(Settings.from_env(bundle=...))` and calls
    # `Engine.ner / embed / similarity_pairs / rank` directly: core, never HTTP.
