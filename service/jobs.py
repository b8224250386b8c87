"""What core hands around: the limits of a request, a model row (:class:`Seq`) and a :class:`Job`.

A job is plain data: the rows to run on one task's graph, the operation that made it, and the
``state`` that operation's ``finish`` needs to assemble the answer from the rows' outputs. No
callables travel with it, so the batcher only moves data between threads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how much one batch may hold."""

    max_items: int = 64
    max_chars: int = 10_000
    threshold_min: float = -10.0
    threshold_max: float = 10.0
    max_entities: int = 20_000  # per request: a low threshold must not flood memory
    batch_tokens: int = 8192  # padded cost of a batch: longest sequence x number of sequences

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits ``service.settings.Settings`` set (its fields of the same names)."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


@dataclass(frozen=True, eq=False)
class Seq:
    """One model row: token ids ([CLS] ... [SEP]) and what the task's post-processing needs of it
    (``meta``: e.g. NER's character offsets, text, threshold and entity budget)."""

    ids: np.ndarray  # (n,) int64
    meta: Any = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(eq=False)
class Job:
    """A validated, tokenized request: rows to run on ``task``'s graph; ``operation`` assembles the answer."""

    operation: str
    task: str
    seqs: list[Seq]
    state: Any = None  # what the operation's finish needs (plain data)
    tokenize_s: float = 0.0
