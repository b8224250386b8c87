"""The ``ropenlp`` command: one app, one sub-app per package; every command is a thin shim.

Heavy imports (torch, onnxruntime) happen inside the commands, so ``ropenlp --help`` is instant and
the serving image (no torch) can run ``ropenlp serve`` and ``ropenlp score``.
"""

from __future__ import annotations

import logging

import typer

import ropenlp

app = typer.Typer(
    name="ropenlp",
    help="Chinese nested NER and sentence similarity on RoFormer: train, export, serve, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ropenlp {ropenlp.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    """Attach the packages' sub-commands (each package owns its ``cli`` module)."""
    import importlib

    for module in ("training.cli", "ropenlp.evaluate", "ropenlp.export", "service.cli"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but something it imports at top level is missing
                raise
            continue
        mod.register(app)


_register()
