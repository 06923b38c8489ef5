"""Which examples each worker trains on at each step: batches by length, the same plan on every worker.

This module owns the batch plan: examples sorted by length (ties broken by a seeded shuffle)
and cut into batches whose rows x longest length stay within a positions budget, so rows
of similar length share a batch and little is padding; the batches of an epoch in a seeded
order; and a step as one batch per worker (a step's batches are consecutive in that order).
The plan is a pure function of the lengths, the budget, the seed and the worker count, so
every worker computes it alone, and a resumed run skips exactly the steps it has done. It
knows nothing of tensors or files.
"""

from __future__ import annotations

import random
from typing import Sequence


def length_batches(lengths: Sequence[int], batch_positions: int, seed: int) -> list[list[int]]:
    """Example indices cut into batches: similar lengths together, rows x longest <= batch_positions
    (an example longer than the budget is a batch of its own)."""
    rng = random.Random(seed)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the newest example is the batch's longest
        if current and (len(current) + 1) * lengths[i] > batch_positions:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class BatchPlan:
    """Steps of a run: step s gives worker r the batch `steps(epoch)[s][r]`."""

    def __init__(self, lengths: Sequence[int], *, batch_positions: int, num_workers: int, seed: int,
                 epochs: int, max_steps: int | None):
        self.lengths = list(lengths)
        self.batch_positions, self.num_workers, self.seed = batch_positions, num_workers, seed
        self.batches_per_epoch = len(length_batches(self.lengths, batch_positions, seed))
        self.steps_per_epoch = self.batches_per_epoch // num_workers  # a step needs a batch for every worker
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(self.lengths)} examples make {self.batches_per_epoch} batches of at most "
                             f"{batch_positions} positions: fewer than the {num_workers} workers (one batch each per "
                             "step); use fewer workers or a smaller data.batch_positions")
        total = epochs * self.steps_per_epoch
        self.num_steps = min(total, max_steps) if max_steps is not None else total
        self._epoch: tuple[int, list[list[list[int]]]] | None = None  # the last epoch's steps

    def epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """Epoch's steps: [step][worker] -> example indices (batch order reshuffled every epoch)."""
        batches = length_batches(self.lengths, self.batch_positions, self.seed + epoch)
        random.Random(self.seed * 1_000_003 + epoch).shuffle(batches)
        w = self.num_workers
        return [batches[s * w:(s + 1) * w] for s in range(self.steps_per_epoch)]

    def batch(self, step: int, worker: int) -> list[int]:
        """The examples worker `worker` trains on at global step `step` (0-based)."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.epoch_steps(epoch))
        return self._epoch[1][within][worker]
