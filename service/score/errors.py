"""Why a scoring run cannot start or go on: one class per exit code (the library raises, the CLI shim
in ``service.cli`` exits with ``exit_code``). What makes one record an error line is not here: those
are :class:`service.errors.ServiceError` subclasses (:mod:`service.score.inputs`).
"""

from __future__ import annotations

from service.score.progress import Summary


class ScoreError(Exception):
    """A run that cannot start or go on. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class UsageError(ScoreError):
    """Options that do not fit together, a missing column, an output that exists (exit 2)."""


class ResumeError(UsageError):
    """``--resume`` refused: no state, other arguments or input, an output that does not match (exit 2)."""


class InputOutputError(ScoreError):
    """The input cannot be read or the output cannot be written (exit 3)."""

    exit_code = 3


class Stopped(ScoreError):
    """The run stopped before the end of the input; ``summary`` says how far it got (resumable)."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


class TooManyErrors(Stopped):
    """More error lines than ``--max-errors`` (exit 1)."""

    exit_code = 1


class Interrupted(Stopped):
    """Ctrl-C or SIGTERM: the lines written so far are checkpointed (exit 130)."""

    exit_code = 130
