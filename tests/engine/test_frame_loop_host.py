"""The frame loop's host work stays off the frame path (CPU, tiny random model).

Admission looks at the queue only as far as free slots last; the held caches' indexes (rows by
key, free parked rows, live holds) answer as a scan of every entry would; finished rows' frames
come back through pinned buffers allocated once, and a burst of rows ending together with too
few buffers still gives every row its own frames. `synth bench-loop` measures the time.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

import numpy as np
import torch
from test_prefill import TINY, _job, _model

from synth.engine.frame_step import FrameStep
from synth.engine.held_cache import HeldCaches
from synth.engine.scheduler import Scheduler


class _CountingQueue(deque):
    """A queue that counts the jobs taken from its front."""

    taken = 0

    def popleft(self):
        self.taken += 1
        return super().popleft()


def _scheduler(num_slots: int, **kw) -> Scheduler:
    model = _model(TINY, torch.float64)
    return Scheduler(model, FrameStep(model, num_slots, 64), **kw)


def test_admission_looks_at_no_more_of_the_queue_than_free_slots():
    scheduler = _scheduler(2)
    g = torch.Generator().manual_seed(0)
    jobs = [replace(_job(f"j{i}", 5 + i % 7, TINY, g), max_frames=2 + i % 3) for i in range(40)]
    scheduler.queue = _CountingQueue()
    for job in jobs:
        scheduler.submit(job)
    scheduler._admit()
    assert scheduler.queue.taken == 2 and len(scheduler.queue) == 38
    assert [row.job.key for row in scheduler.rows] == ["j0", "j1"]
    assert [job.key for job in scheduler.queue] == [f"j{i}" for i in range(2, 40)]  # in order
    scheduler._admit()  # no free slot: nothing is looked at
    assert scheduler.queue.taken == 2
    done = scheduler.run()
    assert sorted(f.key for f in done) == sorted(j.key for j in jobs)
    assert scheduler.queue.taken <= 40 + 2 * scheduler.stats.frames  # never the whole queue per admission


def test_held_cache_indexes_answer_as_a_scan_of_every_entry_would():
    """Random endings, records, parks, returns, takes and clears over 4 slots and 3 parked rows:
    `slot_of`, `any_reserved` and `to_park` agree with scans of the entries at every step."""
    rng = random.Random(0)
    num_slots, parked = 4, 3
    held = HeldCaches(num_slots, parked)
    keys = torch.zeros(3, 2, dtype=torch.long)
    frame, serial = 0, 0

    def scan_slot_of(key):
        return next((i for i, h in enumerate(held.held) if h is not None and h.key == key and h.keys is not None),
                    None)

    for _ in range(2000):
        frame += rng.randint(0, 2)
        op = rng.random()
        slot = rng.randrange(num_slots)
        if op < 0.35:  # a row ends in a free slot (held or not), maybe followed, maybe on hold
            held.take(slot)
            serial += 1
            until = frame + rng.randint(0, 4) if rng.random() < 0.5 else -1
            epoch = held.ended(slot, f"k{serial}", until, followed=rng.random() < 0.7)
            if rng.random() < 0.9:
                held.record(slot, epoch, keys)
        elif op < 0.6:  # another row takes the slot: park its cache first if it is wanted
            row = held.to_park(slot)
            h = held.held[slot]
            free_parked = [i for i in range(num_slots, num_slots + parked) if held.held[i] is None]
            wanted = h is not None and h.keys is not None and h.followed
            # to_park popped `row`: it was the lowest free parked row, or None when none is free or wanted
            assert row == (min(free_parked) if wanted and free_parked else None)
            if row is not None:
                held.move(slot, row)
            held.take(slot)
        elif op < 0.8:  # a follow-up brings a parked cache back into a free slot
            occupied = [i for i in range(num_slots, num_slots + parked) if held.held[i] is not None]
            if occupied:
                held.take(slot)
                held.move(rng.choice(occupied), slot)
                held.take(slot)
        elif op < 0.99:
            pass
        else:
            held.clear()
        live = [h for h in held.held if h is not None]
        for h in live:
            assert held.slot_of(h.key) == scan_slot_of(h.key)
        assert held.slot_of("nobody") is None and held.slot_of(None) is None
        assert held.any_reserved(frame) == any(frame < h.reserved_until for h in live)


def test_finished_rows_come_back_through_buffers_allocated_once():
    """Rows ending together with a single host buffer free: the loop waits for the older copy and
    gives every row its own frames, the same as with a buffer per slot; the buffers are never
    reallocated and all are free at the end."""
    g = torch.Generator().manual_seed(3)
    jobs = [replace(_job(f"j{i}", 6 + i, TINY, g), max_frames=5) for i in range(9)]  # three rows end together
    results = {}
    for buffers in (3, 1):
        scheduler = _scheduler(3)
        pointer = scheduler._host_frames.data_ptr()
        scheduler._free_host_frames = list(range(buffers))
        for job in jobs:
            scheduler.submit(job)
        done = scheduler.run()
        results[buffers] = {f.key: f.codes for f in done}
        assert scheduler._host_frames.data_ptr() == pointer and sorted(scheduler._free_host_frames) == list(
            range(buffers))
        assert all(codes.shape == (5, TINY.num_codebooks) for codes in results[buffers].values())
    alone = _scheduler(1)  # each row generated alone: its own frames, whatever the slot
    for job in jobs:
        alone.submit(job)
    reference = {f.key: f.codes for f in alone.run()}
    for buffers, codes in results.items():
        assert codes.keys() == reference.keys()
        for key in reference:
            np.testing.assert_array_equal(codes[key], reference[key], err_msg=f"{buffers} buffers, {key}")
