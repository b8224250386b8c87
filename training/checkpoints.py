"""Checkpoints of a training run: ``OUT/checkpoints/step-00000500/`` folders, written atomically, the last
``keep`` kept, and the resume point (the latest one) of an output folder."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer.pt"


class Checkpoints:
    """``DIR/step-00000500/`` folders: the model as its trainer saves it plus ``trainer.pt`` (optimizer,
    scheduler, RNG, data position, loop state). Written to a temporary folder and renamed, so a
    crash never leaves a half-written "latest"; only the last ``keep`` are kept."""

    def __init__(self, directory: str | Path, keep: int = 2):
        self.dir, self.keep = Path(directory), keep

    def all(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.glob("step-*") if p.is_dir() and (p / TRAINER_STATE).is_file())

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def save(self, step: int, state: dict, save_model: Callable[[Path], None] | None = None) -> Path:
        final = self.dir / f"step-{step:08d}"
        tmp = self.dir / f".tmp-step-{step:08d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if save_model is not None:
            save_model(tmp)
        torch.save(state, tmp / TRAINER_STATE)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.all()[: -self.keep]:
            shutil.rmtree(old)
        return final

    @staticmethod
    def load(path: str | Path) -> dict:
        return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=True)


def resume_point(out_dir: str | Path, *, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: start fresh); call it before any slow preparation.

    Without ``resume`` an output folder that already holds checkpoints is an error: nothing is
    ever overwritten.
    """
    out = Path(out_dir)
    latest = Checkpoints(out / CHECKPOINTS_DIR).latest()
    if latest is not None and not resume:
        raise FileExistsError(f"{out} already holds checkpoints (latest {latest.name}): pass --resume to "
                              f"continue that run, or set output.dir to another folder")
    if resume and latest is None:
        log.info("--resume: no checkpoint in %s yet, starting from step 0", out)
    return latest
