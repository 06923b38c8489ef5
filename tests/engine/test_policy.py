"""The scheduling policy alone: no model, no torch, milliseconds (`synth.engine.policy`).

A make-believe executor (`policy_sim.SimEngine`) carries out the plans on records, tracking
what every cache row holds, so each property is checked against what the real executor would
do: admission fills free slots in order (or by the work a chain has left), a continued row
keeps exactly what its cache holds, parked caches never exceed their rows, speculative rows
never take a slot a plain row waits for, cancelled rows deliver nothing and free their slot,
and the stats account for every slot-frame. Random arrival orders come from hypothesis.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_sim import Chains, Delivered, SimEngine, frames_of, job, policy, text

from synth.engine.policy import RowEnd


def test_the_policy_imports_and_decides_with_torch_blocked():
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # import torch fails, as where it is not installed\n"
        "import numpy as np\n"
        "from synth.engine.policy import Job, PrefillBuckets, SchedulePolicy\n"
        "from synth.engine.interface import SamplingParams\n"
        "import synth.engine.held_cache, synth.engine.inbox\n"
        "p = SchedulePolicy(2, 64, prefill=PrefillBuckets(64, 2, 128))\n"
        "ids = np.arange(5)\n"
        "p.submit(Job('a', ids, np.zeros((0, 2), np.int64), ids < 0, 3, SamplingParams()))\n"
        "plan = p.schedule()\n"
        "assert [r.job.key for b in plan.prefills for r in b.rows] == ['a'] and plan.prefills[0].shape == (1, 64)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _flat(n: int, caps=(3, 5, 8)) -> list:
    return [job(f"r{i}", text(i + 1, 7, 9), caps[i % len(caps)]) for i in range(n)]


def test_admission_fills_free_slots_in_order_and_looks_no_further():
    p = policy(3)
    jobs = _flat(7)
    for j in jobs:
        p.submit(j)
    plan = p.schedule(now=0.0)
    assert [r.job.key for b in plan.prefills for r in b.rows] == ["r0", "r1", "r2"]
    assert [r.slot for b in plan.prefills for r in b.rows] == [0, 1, 2]
    assert [j.key for j in p.queue] == [f"r{i}" for i in range(3, 7)]
    assert not p.schedule(now=0.0)  # no free slot: nothing
    assert p.stats.prefill_rows == 3 and p.stats.prefill_tokens == 9 and p.stats.prefill_positions == 3 * 64  # rows round up to 4, capped at the slots


def test_a_queue_by_priority_puts_the_most_work_left_first_and_keeps_arrival_order_among_equals():
    p = policy(1, by_priority=True)
    works = [5, 9, 5, 20, 9, 1]
    for i, w in enumerate(works):
        p.submit(job(f"j{i}", text(i + 1), 3, chain_frames=w))
    assert [j.key for j in p.queue] == ["j3", "j1", "j4", "j0", "j2", "j5"]
    fifo = policy(1)
    for i, w in enumerate(works):
        fifo.submit(job(f"j{i}", text(i + 1), 3, chain_frames=w))
    assert [j.key for j in fifo.queue] == [f"j{i}" for i in range(6)]


# ------------------------------------------------------------------------ random arrivals


@st.composite
def workloads(draw):
    """Chains and flat rows in a random arrival order, on a random engine shape, with random
    follow-up delays, EOS frames and cancellations."""
    num_slots = draw(st.integers(1, 5))
    caps = draw(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=4), min_size=1, max_size=7))
    return dict(
        num_slots=num_slots, caps=caps,
        park_rows=draw(st.integers(0, 4)), hold_frames=draw(st.sampled_from([0, 0, 2])),
        by_priority=draw(st.booleans()), kv_continuation=draw(st.booleans()), delay=draw(st.integers(0, 3)),
        order=draw(st.permutations(range(len(caps)))), eos=draw(st.sets(st.tuples(st.integers(0, 6), st.integers(0, 3)))),
        cancel=draw(st.lists(st.tuples(st.integers(0, 60), st.integers(0, len(caps) - 1), st.integers(0, 3)),
                             max_size=3)),
    )


class _Checked(SimEngine):
    """The simulator, checking the policy's invariants after every admission."""

    submitted: list
    admitted: list

    def submit(self, jobs) -> None:
        for j in jobs:
            self.submitted.append(j.key)
        super().submit(jobs)

    def _execute(self, plan) -> None:
        super()._execute(plan)
        p = self.policy
        # rows that take a slot, in the order they took them (a plan lists full prefills first)
        self.admitted += sorted((r.job.key for b in plan.prefills for r in b.rows), key=self.submitted.index)
        busy = [s.row.slot for s in p.slots if s.row is not None]
        assert len(set(busy)) == len(busy) == p._num_busy
        assert sum(h is not None for h in p.held.held[p.num_slots:]) <= p.park_rows
        if p.hold_frames == 0 and p.min_admit == 1:  # work-conserving: no job waits beside a free slot
            assert not (p.queue and len(busy) < p.num_slots), (list(p.queue), busy)
        if p.by_priority:
            works = [j.work for j in p.queue]
            assert works == sorted(works, reverse=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_random_arrivals_deliver_every_row_once_and_keep_only_what_caches_hold(w):
    chains = Chains(w["caps"])
    p = policy(w["num_slots"], 128, park_rows=w["park_rows"], hold_frames=w["hold_frames"],
               by_priority=w["by_priority"], kv_continuation=w["kv_continuation"])
    eos_at = {f"c{c}:{t}": 1 for c, t in w["eos"]}  # an EOS frame after one frame
    sim = _Checked(p, on_result=chains, delay=w["delay"], eos_at=eos_at)
    sim.submitted, sim.admitted = [], []
    first = chains.first()
    sim.submit([first[i] for i in w["order"]])
    cancels = sorted(w["cancel"])
    cancelled = set()
    while True:
        while cancels and cancels[0][0] <= p.stats.frames:
            _, c, t = cancels.pop(0)
            key = f"c{c}:{t}"
            if key in sim.submitted and key not in {d.key for d in sim.delivered}:
                sim.cancel(key)
                cancelled.add(key)
        if not sim.step():
            break
        assert p.stats.frames < 10_000
    delivered = [d.key for d in sim.delivered]
    assert len(delivered) == len(set(delivered)) and not cancelled & set(delivered)
    expected = {f"c{c}:{t}" for c, caps in enumerate(w["caps"]) for t in range(len(caps))}
    # A chain stops at its cancelled turn (its next turn would have come from that result).
    assert set(delivered) | cancelled == {k for k in expected if k in sim.submitted}
    for d in sim.delivered:
        c, t = (int(x) for x in d.key[1:].split(":"))
        n = min(w["caps"][c][t], eos_at.get(d.key, 99))
        np.testing.assert_array_equal(d.frames, frames_of(d.key, n))
    if not p.by_priority and not p.hold_frames:  # first come, first served
        assert sim.admitted == [k for k in sim.submitted if k in set(sim.admitted)]
    s = p.stats
    assert s.slot_frames == s.busy_slot_frames + s.idle_queued + s.idle_between_turns + s.idle_drain
    assert s.useful_frames == sum(len(d.frames) for d in sim.delivered)
    assert s.cancelled_rows == len(cancelled)
    assert s.busy_slot_frames >= s.useful_frames + s.discarded_frames
    assert not p.busy and not p.waiting and not p._live


def test_chains_continue_their_caches_through_parked_rows():
    """Six chains of four turns on two slots, in lockstep: with room to park five caches (the four
    waiting chains', and one for the cache set aside before a parked one comes back), every turn
    after the first keeps its predecessor's prompt and frames, whichever slot it lands in; fewer
    parked rows leave the rest to full prefills."""
    caps = [[4, 3, 5, 2]] * 6
    for park_rows, continued in ((5, 18), (2, None)):
        p = policy(2, park_rows=park_rows)
        chains = Chains(caps)
        sim = SimEngine(p, on_result=chains)
        sim.submit(chains.first())
        sim.run()
        assert len(sim.delivered) == 24 and sim.checks == p.stats.continued_rows
        assert p.stats.parked >= p.stats.unparked > 0
        if continued is not None:
            assert p.stats.continued_rows == continued
        else:
            assert 0 < p.stats.continued_rows < 18


def test_speculative_rows_take_only_slots_no_plain_row_waits_for():
    p = policy(2)
    p.submit(job("s0", text(1), 4, speculative=True))
    p.submit(job("a", text(2), 4))
    p.submit(job("b", text(3), 4))
    p.submit(job("s1", text(4), 4, speculative=True))
    first = [r.job.key for b in p.schedule(now=0.0).prefills for r in b.rows]
    assert first == ["a", "b"] and [j.key for j in p.speculative] == ["s0", "s1"]
    p.frame_ran(64)
    p.rows_ended([RowEnd(0, 0, "eos", 0)])
    assert [r.job.key for b in p.schedule(now=0.0).prefills for r in b.rows] == ["s0"]


def test_a_cancelled_row_frees_its_slot_for_the_next_and_delivers_nothing():
    """Queued, decoding, and ended with its frames still on the way: each is dropped, its frames
    counted as discarded, and a decoding row's slot goes to the next queued job at once."""
    p = policy(1)
    sim = SimEngine(p)
    sim.submit([job("long", text(1), 50), job("next", text(2), 3), job("queued", text(3), 3)])
    for _ in range(6):
        sim.step()
    assert p.rows[0].job.key == "long"
    assert p.cancel("queued").where == "queued"
    cancelled = p.cancel("long")
    assert (cancelled.where, cancelled.slot, cancelled.frames) == ("decoding", 0, 6)
    assert p.rows[0] is None and p.cancel("long") is None
    sim.step()
    assert p.rows[0].job.key == "next" and p.rows[0].first_frame == 6
    sim.run()
    assert [d.key for d in sim.delivered] == ["next"]
    # Ended, its frames not yet on the host (a lagged executor): dropped when they arrive.
    p.submit(job("late", text(4), 2, followed=True))
    p.schedule(now=0.0)
    p.frame_ran(64)
    p.frame_ran(64)
    [row] = p.rows_ended([RowEnd(0, p.stats.frames - 1, "max_length", 2)])
    assert p.cancel("late").where == "ending"
    assert not p.row_done(row, text(4)) and p.held.slot_of("late") is None
    s = p.stats
    assert (s.cancelled_rows, s.discarded_frames, s.useful_frames) == (3, 6 + 2, 3)


def test_stats_say_where_idle_slot_frames_go():
    """Two slots: a job waiting out a hold (queued), a chain's follow-up still being prepared
    (between turns), and one long row running alone at the end (the tail)."""
    for hold_frames, other in ((0, []), (4, [job("other", text(8), 2)])):
        p = policy(2, hold_frames=hold_frames)
        chains = Chains([[2, 2]])
        sim = SimEngine(p, on_result=chains, delay=2)
        sim.submit(chains.first() + [job("long", text(9), 12)] + other)
        sim.run()
        s = p.stats
        assert s.slot_frames == s.busy_slot_frames + s.idle_queued + s.idle_between_turns + s.idle_drain
        assert s.idle_drain > 0  # "long" alone at the end
        if other:  # "other" waited while the chain's slot was held for its follow-up
            assert s.idle_queued > 0
        else:  # the chain's slot idled while its follow-up was prepared
            assert s.idle_between_turns == 2


def _benchmark_like_caps(num_turns: int, seed: int = 0) -> list[int]:
    """Caps as the benchmark's workload draws them: 2..60 words (log-uniform), ~4 frames a word."""
    rng = np.random.RandomState(seed)
    words = np.exp(rng.uniform(np.log(2), np.log(60), num_turns)).astype(int)
    return [int(min(80, max(8, w * 4 + rng.randint(0, 10)))) for w in words]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chains_by_work_left_keep_nine_tenths_of_slot_frames_useful(seed):
    """48 dialogues of 4 turns on 32 slots (the dialogue benchmark's shape), each turn's follow-up
    submitted as soon as it ends: queued first come, first served, the longest chains start late
    and run alone at the end; queued by the work each chain has left, at least 0.9 of the
    computed slot-frames are useful."""
    caps = _benchmark_like_caps(192, seed)
    dialogues = [caps[i: i + 4] for i in range(0, 192, 4)]
    useful = {}
    for by_priority in (False, True):
        p = policy(32, 2048, by_priority=by_priority)
        chains = Chains(dialogues)
        sim = SimEngine(p, on_result=chains)
        sim.submit(sorted(chains.first(), key=lambda j: -j.max_frames))  # the engine's longest_first
        sim.run()
        assert len(sim.delivered) == 192
        useful[by_priority] = p.stats.useful_frames / p.stats.slot_frames
        assert p.stats.idle_queued == 0
    assert useful[True] >= 0.9 > useful[False], useful


def test_delivered_is_what_a_row_generates():
    done = Delivered("k", frames_of("k", 3), 0, 3)
    np.testing.assert_array_equal(done.frames, frames_of("k", 5)[:3])
