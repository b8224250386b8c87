"""Resumable batches: an endless iterator of batches whose position is part of a checkpoint.

:class:`EpochBatches` cuts a fixed list of examples into batches epoch after epoch (a seeded
permutation per epoch, optionally by token budget and length buckets); ``state_dict`` /
``load_state_dict`` save and restore the position and the collate generator, so a resumed run sees
exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch


class Batches(Protocol):
    """An endless iterator of batches (dicts of tensors) whose position can be saved and restored."""

    def __next__(self) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...
    @property
    def epoch(self) -> float: ...


class EpochBatches:
    """Endless batches over a fixed list of examples, epoch after epoch.

    Each epoch is a permutation drawn from ``(seed, epoch)``, cut into batches of ``batch_size``
    examples or, with ``batch_tokens``, of at most that many padded tokens (longest x count); with
    ``bucket > 0`` examples are sorted by length within pools of ``bucket`` batches first (less
    padding) and the batches shuffled again. No example is ever dropped: the last batch may be short.
    ``collate(examples, generator)`` builds the tensors; ``generator`` (a seeded ``torch.Generator``)
    is for random choices such as dynamic masking, and its state is part of :meth:`state_dict`.
    """

    def __init__(self, examples: Sequence[Any], *, collate: Callable[[list, torch.Generator], dict],
                 lengths: Sequence[int] | None = None, batch_size: int = 32, batch_tokens: int = 0,
                 bucket: int = 0, seed: int = 0, shuffle: bool = True):
        if not len(examples):
            raise ValueError("no examples to make batches from")
        self.examples, self.collate = examples, collate
        self.lengths = np.asarray(lengths if lengths is not None else [len(e) for e in examples])
        self.batch_size, self.batch_tokens, self.bucket = batch_size, batch_tokens, bucket
        self.seed, self.shuffle = seed, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self._epoch, self._index = 0, 0
        self._plan = self.plan(0)

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The batches (arrays of example indices) of one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples)) if self.shuffle else np.arange(len(self.examples))
        if self.bucket > 0:
            pool = self.bucket * (self.batch_size if not self.batch_tokens else
                                  max(1, self.batch_tokens // max(int(self.lengths.mean()), 1)))
            order = np.concatenate([chunk[np.argsort(self.lengths[chunk], kind="stable")]
                                    for chunk in np.array_split(order, max(1, -(-len(order) // pool)))])
        batches, start = [], 0
        while start < len(order):
            end = start + 1
            if self.batch_tokens:
                longest = self.lengths[order[start]]
                while end < len(order):
                    longer = max(longest, self.lengths[order[end]])
                    if longer * (end - start + 1) > self.batch_tokens:  # padded cost of one more
                        break
                    longest, end = longer, end + 1
            else:
                end = min(start + self.batch_size, len(order))
            batches.append(order[start:end])
            start = end
        if self.bucket > 0 and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    @property
    def steps_per_epoch(self) -> int:
        return len(self.plan(0))

    @property
    def epoch(self) -> float:
        return self._epoch + self._index / max(len(self._plan), 1)

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        if self._index >= len(self._plan):
            self._epoch, self._index = self._epoch + 1, 0
            self._plan = self.plan(self._epoch)
        idx = self._plan[self._index]
        self._index += 1
        return self.collate([self.examples[i] for i in idx], self.generator)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "index": self._index, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self._epoch, self._index = state["epoch"], state["index"]
        self.generator.set_state(state["generator"])
        self._plan = self.plan(self._epoch)
