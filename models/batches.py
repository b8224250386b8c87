"""Batching by token budget: what a padded batch costs, and how to cut a list of sequences into batches.

Torch-free, shared by the service (``service.core`` plans the batches of a job, ``service.batching``
charges them) and by training's evaluation (``training.encoders.length_batches``), so both group
sequences the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def padded_cost(lengths: Sequence[int]) -> int:
    """What a batch costs: every row is padded to the longest."""
    return max(lengths, default=0) * len(lengths)


def plan_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group indices into batches sorted by length (longest first), each costing at most ``budget``.

    A sequence longer than the budget on its own still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[list[int]] = []
    current: list[int] = []
    for k in order:
        if current and lengths[current[0]] * (len(current) + 1) > budget:  # current[0] is its longest
            batches.append(current)
            current = []
        current.append(k)
    if current:
        batches.append(current)
    return batches
