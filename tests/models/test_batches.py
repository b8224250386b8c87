"""The batch planner: token budget, a bound on padding, every row planned once, the oldest queued row first."""

import random

import pytest

from models.batches import MAX_PADDING, padded_cost, padding_fraction, plan_batches, select_batch


def test_padding_fraction():
    assert padding_fraction([30, 30]) == 0.0 and padding_fraction([]) == 0.0
    assert padding_fraction([60, 30]) == pytest.approx(0.25) and padded_cost([60, 30]) == 120


@pytest.mark.parametrize("seed", range(5))
def test_plan_batches_bounds_padding_and_budget(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(2, 64) for _ in range(200)]
    batches = plan_batches(lengths, 2048, max_padding=MAX_PADDING)
    assert sorted(k for b in batches for k in b) == list(range(len(lengths)))  # each row once
    for b in batches:
        rows = [lengths[k] for k in b]
        assert padded_cost(rows) <= 2048 and padding_fraction(rows) <= MAX_PADDING
        assert rows == sorted(rows, reverse=True)
    unbounded = plan_batches(lengths, 2048)
    padding = sum(padded_cost([lengths[k] for k in b]) - sum(lengths[k] for k in b) for b in batches)
    assert padding < sum(padded_cost([lengths[k] for k in b]) - sum(lengths[k] for k in b) for b in unbounded)


def test_the_issue_case_costs_about_its_real_tokens():
    """55 queued rows of ~30 tokens and a few long ones: the budget alone pads every row to the longest."""
    lengths = [28 + k % 5 for k in range(55)] + [62, 60]
    oldest = 0
    unbounded = select_batch(lengths, oldest, 8192)
    bounded = select_batch(lengths, oldest, 8192, max_padding=MAX_PADDING)
    assert padding_fraction([lengths[k] for k in unbounded]) > 0.45  # what issue 16 measured: half padding
    assert oldest in bounded and len(bounded) == 55  # the ~30-token rows together, the long ones next
    assert padding_fraction([lengths[k] for k in bounded]) <= 0.15


@pytest.mark.parametrize("seed", range(5))
def test_select_batch_keeps_the_oldest_within_the_bounds(seed):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 100) for _ in range(60)]
    for oldest in (0, 7, 59):
        chosen = select_batch(lengths, oldest, 1024, max_padding=MAX_PADDING)
        rows = [lengths[k] for k in chosen]
        assert oldest in chosen and len(set(chosen)) == len(chosen)
        assert padded_cost(rows) <= 1024 and padding_fraction(rows) <= MAX_PADDING
        assert rows == sorted(rows)
    assert select_batch([500, 3], 0, 128, max_padding=MAX_PADDING) == [0]  # over the budget alone: runs alone
    assert select_batch([40, 10], 0, 1000, max_padding=MAX_PADDING) == [0]  # 10 padded to 40: 37.5 % padding
