"""What makes an export fail: :class:`ExportError`, and the checks shared by every task's exporter."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class ExportError(RuntimeError):
    """An export that cannot produce a correct bundle: the message names the checkpoint or graph and why."""


@contextlib.contextmanager
def stage(what: str):
    """Turn a third-party failure (exporter, optimiser, quantizer, converter) into an ExportError naming the stage."""
    try:
        yield
    except ExportError:
        raise
    except Exception as e:  # these tools raise many kinds of errors
        raise ExportError(f"{what} failed: {type(e).__name__}: {e}") from e


def fail_above(diff: float, tolerance: float, file: Path, what: str, reference: str = "PyTorch") -> None:
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"{file.name}: ONNX {what} differ from {reference} by up to {diff:.3g} on the sample "
                          f"texts (tolerance {tolerance:g}): the exported graph is not faithful")


def check_finite(outputs: Sequence[np.ndarray], file: Path) -> None:
    for out in outputs:
        if np.isnan(out).any() or np.isposinf(out).any():
            raise ExportError(f"{file.name}: the graph produced NaN or +inf on the sample texts")
