"""A make-believe executor for the scheduling policy: no model, no torch, every cache row's content tracked.

`SimEngine` carries out `synth.engine.policy`'s plans the way `synth.engine.scheduler`
does, on records instead of tensors: a cache row is a numpy array of position keys, a
prefill writes a prompt's keys into it, a frame writes the frame's key at the row's next
position, a cache move copies keys. So a test can check what the real executor cannot
afford to: that a continued row's kept positions are exactly what its cache holds. Rows
generate deterministic frames and stop at their cap (or an `eos_at` frame); follow-ups
come back through `on_result` after `delay` frames, as a chain's next turn does.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from synth.engine.held_cache import frame_keys
from synth.engine.interface import SamplingParams
from synth.engine.policy import Job, PrefillBuckets, RowEnd, SchedulePolicy, SlotRow

K = 2  # codebooks of the make-believe frames
GREEDY = SamplingParams(do_sample=False)


def frames_of(key, n: int) -> np.ndarray:
    """The n frames a row `key` generates [n, K]: the same whatever its slot or its neighbours."""
    base = zlib.crc32(str(key).encode()) % 1000
    j = np.arange(n)
    return np.stack([(base + 7 * j) % 997, j % 5], axis=1).astype(np.int64)


def job(key, keys: np.ndarray, max_frames: int, **kw) -> Job:
    """A job whose prompt has the position keys `keys` [T, 1 + K]."""
    is_audio = keys[:, 0] < 0
    ids = np.where(is_audio, 0, keys[:, 0])
    return Job(key, ids, keys[is_audio, 1:], is_audio, max_frames=max_frames, sampling=GREEDY, **kw)


def text(*ids: int) -> np.ndarray:
    """Keys of text positions."""
    keys = np.full((len(ids), 1 + K), -1, dtype=np.int64)
    keys[:, 0] = ids
    return keys


@dataclass
class Delivered:
    key: object
    frames: np.ndarray
    slot: int
    frame: int  # the frame count when it was delivered


@dataclass
class SimEngine:
    """Runs the policy over make-believe slots; see the module docstring."""

    policy: SchedulePolicy
    on_result: Callable[[Delivered], list[Job]] | None = None
    delay: int = 0  # frames from a row's end to its follow-ups' submission
    eos_at: dict = field(default_factory=dict)  # key -> frame index of its EOS frame
    delivered: list[Delivered] = field(default_factory=list)
    checks: int = 0  # continued rows whose kept positions were checked against their cache

    def __post_init__(self):
        p = self.policy
        self.cache = np.full((p.num_slots + p.park_rows, p.max_positions, 1 + K), -2, dtype=np.int64)
        self.generated = [0] * p.num_slots  # frames made by the row in each slot
        self.later: list[tuple[int, list[Job]]] = []  # (frame due, jobs)

    def submit(self, jobs) -> None:
        for j in jobs:
            self.policy.submit(j)

    def cancel(self, key) -> None:
        self.policy.cancel(key)  # a decoding row's slot is simply not advanced again

    def step(self) -> bool:
        """One admission and, if any row decodes, one frame; False when nothing is left to do."""
        p = self.policy
        for due, jobs in [item for item in self.later if item[0] <= p.stats.frames]:
            self.later.remove((due, jobs))
            self.submit(jobs)
        self._execute(p.schedule(now=0.0))
        if not p.busy:
            if p.waiting:
                return True
            if self.later:  # nothing runs: the follow-ups come without frames passing
                self.submit(self.later.pop(0)[1])
                return True
            p.idle()
            return False
        self._frame()
        return True

    def run(self, max_frames: int = 100_000) -> list[Delivered]:
        while self.step():
            assert self.policy.stats.frames < max_frames
        return self.delivered

    # ------------------------------------------------------------------ the plan

    def _execute(self, plan) -> None:
        n = self.policy.num_slots
        for move in plan.moves:
            assert (move.src < n) != (move.dst < n), move  # a slot to a parked row, or back
            self.cache[move.dst, : move.length] = self.cache[move.src, : move.length]
        for batch in plan.prefills:
            R, T = batch.shape
            assert len(batch.rows) <= R and all(r.prompt_len - r.kept <= T for r in batch.rows)
            for row in batch.rows:
                self._start(row, batch.extend)
        for j in plan.empty:
            self._deliver(j.key, np.zeros((0, K), np.int64), -1)

    def _start(self, row: SlotRow, extend: bool) -> None:
        keys = row.job.keys()
        held = self.cache[row.slot]
        assert extend == (row.kept > 0)
        if extend:  # what the row keeps must be exactly what its cache holds
            np.testing.assert_array_equal(held[: row.kept], keys[: row.kept], err_msg=str(row.job.key))
            self.checks += 1
        held[row.kept : row.prompt_len] = keys[row.kept :]
        self.generated[row.slot] = 0

    # ------------------------------------------------------------------ a frame

    def _frame(self) -> None:
        p = self.policy
        frame_index = p.stats.frames
        kv_len = p.positions_needed()
        ends = []
        for slot in p.slots:
            row = slot.row
            if row is None:
                continue
            made = self.generated[slot.index]
            pos = row.prompt_len + made
            assert pos < kv_len <= p.max_positions, (pos, kv_len)
            eos = self.eos_at.get(row.job.key)
            frame = frames_of(row.job.key, made + 1)[made]
            self.cache[slot.index, min(pos, p.max_positions - 1)] = frame_keys(frame[None])[0]
            self.generated[slot.index] = made + 1
            if eos == made:
                ends.append(RowEnd(slot.index, frame_index, "eos", made))
            elif made + 1 >= row.cap:
                ends.append(RowEnd(slot.index, frame_index, "max_length", made + 1))
        p.frame_ran(kv_len)
        for row in p.rows_ended(ends):
            frames = frames_of(row.job.key, row.fed)
            keys = np.concatenate([row.job.keys(), frame_keys(frames)])[: p.max_positions - 1]
            if p.row_done(row, keys):
                self._deliver(row.job.key, frames[: row.frames], row.slot)

    def _deliver(self, key, frames: np.ndarray, slot: int) -> None:
        done = Delivered(key, frames, slot, self.policy.stats.frames)
        self.delivered.append(done)
        follow_ups = self.on_result(done) if self.on_result is not None else []
        if follow_ups:
            self.later.append((self.policy.stats.frames + self.delay, follow_ups))


def policy(num_slots: int, max_positions: int = 256, *, park_rows: int | None = None, **kw) -> SchedulePolicy:
    """A policy as the engine builds it (prefill budget of 4 x max_positions)."""
    buckets = PrefillBuckets(max_positions, num_slots, 4 * max_positions)
    return SchedulePolicy(num_slots, max_positions, prefill=buckets,
                          park_rows=num_slots if park_rows is None else park_rows, **kw)


@dataclass
class Chains:
    """Chains of turns, each turn's prompt its predecessor's prompt, frames and a new text token,
    as a chain with codes context and nothing dropped builds them (KV continuation keeps all
    but the new end). caps[c][t]: turn t of chain c's cap."""

    caps: list[list[int]]
    hints: bool = True  # tell the policy each turn's remaining chain work

    def __post_init__(self):
        self.prompts: dict[str, np.ndarray] = {}

    def first(self) -> list[Job]:
        return [self._job(c, 0, text(100 + c)) for c in range(len(self.caps))]

    def _job(self, c: int, t: int, keys: np.ndarray) -> Job:
        key = f"c{c}:{t}"
        self.prompts[key] = keys
        caps = self.caps[c]
        return job(key, keys, caps[t], continues=f"c{c}:{t - 1}" if t else None, followed=t + 1 < len(caps),
                   chain_frames=sum(caps[t:]) if self.hints else 0)

    def __call__(self, done: Delivered) -> list[Job]:
        """The next turn of the chain whose turn is done (nothing for rows of no chain)."""
        if done.key not in self.prompts:
            return []
        c, t = (int(x) for x in str(done.key)[1:].split(":"))
        if t + 1 >= len(self.caps[c]):
            return []
        keys = np.concatenate([self.prompts.pop(done.key), frame_keys(done.frames), text(200 + t)])
        return [self._job(c, t + 1, keys)]
