"""The batch plan: length buckets within the budget, every example once an epoch, the same plan everywhere."""

from __future__ import annotations

import random

import pytest

from synth.train.sampler import BatchPlan, length_batches


def test_batches_hold_similar_lengths_within_the_budget():
    lengths = [random.Random(1).randint(20, 400) for _ in range(200)] + [900]
    batches = length_batches(lengths, 1000, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # each example once
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= 1000 or len(batch) == 1
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert max(spans) < 60  # sorted by length: a batch's rows differ little
    assert batches == length_batches(lengths, 1000, seed=3)


def test_the_plan_gives_each_worker_its_own_batches_and_reshuffles_every_epoch():
    lengths = [50 + i % 7 for i in range(40)]
    plan = BatchPlan(lengths, batch_positions=200, num_workers=3, seed=0, epochs=2, max_steps=None)
    assert plan.num_steps == 2 * plan.steps_per_epoch == 2 * (plan.batches_per_epoch // 3)
    epoch0 = [plan.batch(s, w) for s in range(plan.steps_per_epoch) for w in range(3)]
    seen = [i for b in epoch0 for i in b]
    assert len(seen) == len(set(seen))  # no example twice in an epoch, across workers
    epoch1 = [plan.batch(plan.steps_per_epoch + s, w) for s in range(plan.steps_per_epoch) for w in range(3)]
    assert epoch1 != epoch0
    again = BatchPlan(lengths, batch_positions=200, num_workers=3, seed=0, epochs=5, max_steps=4)
    assert again.num_steps == 4 and [again.batch(s, 1) for s in range(4)] == [plan.batch(s, 1) for s in range(4)]
    with pytest.raises(ValueError, match="fewer than the 3 workers"):
        BatchPlan([10, 10], batch_positions=100, num_workers=3, seed=0, epochs=1, max_steps=None)
