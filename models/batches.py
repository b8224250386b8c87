"""Batching by token budget: what a padded batch costs, and how to cut a list of sequences into batches.

Torch-free, shared by the service (``service.core`` plans the batches of a job, ``service.batching``
forms batches from what is queued) and by training's evaluation (``training.encoders.length_batches``),
so both group sequences the same way.

Every row of a batch is padded to its longest, so a batch costs ``longest x count`` (:func:`padded_cost`)
whatever its real tokens. Batches are formed in length order, and the service also cuts a batch where its
padding would exceed ``max_padding`` of that cost (:data:`MAX_PADDING`): a batch then costs about its real
tokens (issue 16 measured half of the model time on padding when 55 rows of ~30 tokens filled an
8,192-token budget padded to ~60).
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_PADDING = 0.25  # the service's bound: padded positions / padded cost of a batch (a lone row has none)


def padded_cost(lengths: Sequence[int]) -> int:
    """What a batch costs: every row is padded to the longest."""
    return max(lengths, default=0) * len(lengths)


def padding_fraction(lengths: Sequence[int]) -> float:
    """The share of a batch's padded cost that is padding: 0 for rows of one length."""
    cost = padded_cost(lengths)
    return 0.0 if cost == 0 else 1.0 - sum(lengths) / cost


def _fits(longest: int, count: int, real: int, budget: int, max_padding: float | None) -> bool:
    cost = longest * count
    return cost <= budget and (max_padding is None or cost - real <= max_padding * cost)


def plan_batches(lengths: Sequence[int], budget: int, *, max_padding: float | None = None) -> list[list[int]]:
    """Group indices into batches sorted by length (longest first), each costing at most ``budget`` and, with
    ``max_padding``, holding at most that share of padding.

    A sequence longer than the budget on its own still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for k in order:
        # current[0] is its longest: adding a shorter row raises only the padding
        if current and not _fits(lengths[current[0]], len(current) + 1, real + lengths[k], budget, max_padding):
            batches.append(current)
            current, real = [], 0
        current.append(k)
        real += lengths[k]
    if current:
        batches.append(current)
    return batches


def select_batch(lengths: Sequence[int], oldest: int, budget: int, *,
                 max_padding: float | None = None) -> list[int]:
    """Indices (into ``lengths``, the queued rows) of one batch: the ``oldest`` row plus neighbours in length
    order, while ``longest x count <= budget`` and (with ``max_padding``) the padding stays within that share.

    Each step takes the closer in length of the next shorter and the next longer neighbour (the one that adds
    less padding). Returned sorted by length.
    """
    by_len = sorted(range(len(lengths)), key=lambda k: (lengths[k], k))
    k = by_len.index(oldest)
    lo, hi = k, k + 1
    longest, real = lengths[oldest], lengths[oldest]
    while True:
        n = hi - lo
        options = []
        if lo > 0:
            short = lengths[by_len[lo - 1]]
            if _fits(longest, n + 1, real + short, budget, max_padding):
                options.append((longest - short, 0))  # padding it adds to the batch
        if hi < len(by_len):
            long_ = lengths[by_len[hi]]
            if _fits(long_, n + 1, real + long_, budget, max_padding):
                options.append(((long_ - longest) * n, 1))  # every row so far pads to the new longest
        if not options:
            return by_len[lo:hi]
        _, side = min(options)
        if side == 0:
            lo -= 1
            real += lengths[by_len[lo]]
        else:
            longest = lengths[by_len[hi]]
            real += longest
            hi += 1
