"""Continuous batching of CSM rows over a fixed set of decoding slots: the executor.

This module owns the execution of the scheduling policy's plans (`synth.engine.policy`,
which decides and imports no torch): it turns each `StepPlan` into tensors and calls on the
model (parked caches copied out and back, prefills of new rows and extensions of continued
ones at the plan's bucketed shapes, rows started in the `FrameStep`), runs the frames, reads
each frame's stop flags, brings finished rows' frames to the host, and hands the policy back
what happened (`frame_ran`, `rows_ended`, `row_done`). It knows no policy of its own: which
job goes where, and when, is the plan's. Jobs may be submitted or cancelled while it runs (from
the `on_finished` and `on_frame` callbacks), e.g. a conversation's next turn.

Padding rows of a prefill write no cache row; padding positions sit after each row's last one,
where decoding writes before it reads. On CUDA the host reads each frame's stop flags
`status_lag` frames late (default 2) from pinned memory, so the GPU always has frames queued
and never waits on the host; a finished row then sits frozen in its slot for that many frames.
Its frames come back through pinned host buffers allocated once. Nothing the loop does per
frame scans the queue or every held cache (the policy's admission looks at the queue only as
far as free slots last, and the held caches are indexed: `synth.engine.held_cache`). It knows
nothing about text, tokenizers or audio; of the `Engine` records it carries only each job's
`SamplingParams`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from synth.engine.frame_step import FrameStep, GraphedFrame, on_device, to_device
from synth.engine.held_cache import frame_keys
from synth.engine.lean_csm import LeanCsm
from synth.engine.options import FastEngineOptions
from synth.engine.policy import (
    PREFILL_MIN_LENGTH,
    CacheMove,
    Cancelled,
    Job,
    PrefillBatch,
    PrefillBuckets,
    RowEnd,
    SchedulePolicy,
    SchedulerStats,
    SlotRow,
    StepPlan,
)
from synth.engine.stop import RUNNING, STOP_REASONS

# The policy's records, importable from here as before the split.
__all__ = ["PREFILL_MIN_LENGTH", "Cancelled", "Finished", "Job", "PrefillBuckets", "Scheduler", "SchedulerStats",
           "SlotRow"]


@dataclass
class Finished:
    key: Any
    codes: np.ndarray  # [num_frames, K] int16, frames before the EOS frame
    stop_reason: str
    num_prompt_tokens: int
    slot: int
    submitted_s: float
    started_s: float
    finished_s: float
    followed: bool = False  # a follow-up will continue this row: its result is on a chain's path


@dataclass
class _Copy:
    """A finished row's frames on their way to the host: history[row.slot, :row.fed] -> host buffer."""

    row: SlotRow
    buffer: int
    event: torch.cuda.Event | None  # recorded after the copy (CUDA); None: already done


@dataclass
class _Snapshot:
    """A frame's stop flags on their way to the host."""

    event: torch.cuda.Event | None
    status: torch.Tensor  # [2, B]: stop codes, result lengths
    frame_index: int


class Scheduler:
    """Runs jobs through a FrameStep with `num_slots` rows decoding concurrently: the policy
    decides (`self.policy`), this executes."""

    def __init__(self, model: LeanCsm, step: FrameStep, *, use_cuda_graph: bool | None = None,
                 max_prefill_rows: int | None = None, min_admit: int | None = None, status_lag: int | None = None,
                 prefill_tokens: int = FastEngineOptions.prefill_tokens,
                 kv_continuation: bool = FastEngineOptions.kv_continuation,
                 hold_frames: int = FastEngineOptions.hold_frames, park_rows: int | None = None,
                 by_priority: bool = False):
        """min_admit: while rows are decoding, wait until this many slots are free before a
        prefill (default num_slots // 32, at least 1): fewer, larger prefills.
        status_lag: frames the host reads the stop flags behind the newest queued frame
        (default 2 on CUDA, 0 on CPU, where frames run synchronously anyway).
        prefill_tokens: most positions (rows x bucketed length) in one prefill; raised to the
        longest length bucket when below it, so that any prompt fits.
        kv_continuation: admit a job to a free slot whose cache holds the start of its prompt and
        prefill only the rest; hold_frames: frames a `followed` row's slot waits for its follow-up;
        park_rows: most slot caches that can be set aside for follow-ups, each allocated on first use
        (None: num_slots). by_priority: queue jobs by the work their chain has left (`Job.work`)."""
        self.model, self.step = model, step
        self.num_slots, self.max_positions = step.num_slots, step.max_positions
        self.device = step.state.hidden.device
        self.is_cuda = self.device.type == "cuda"
        use_cuda_graph = self.is_cuda if use_cuda_graph is None else use_cuda_graph
        self.run_frame = GraphedFrame(step) if use_cuda_graph else step.frame
        buckets = PrefillBuckets(self.max_positions, min(max_prefill_rows or self.num_slots, self.num_slots),
                                 prefill_tokens)
        park_rows = self.num_slots if park_rows is None else park_rows
        self.policy = SchedulePolicy(self.num_slots, self.max_positions, prefill=buckets, min_admit=min_admit,
                                     kv_continuation=kv_continuation, hold_frames=hold_frames, park_rows=park_rows,
                                     by_priority=by_priority)
        model.setup_parking(self.policy.park_rows)
        self._slot_index = [torch.tensor([i], device=self.device) for i in range(self.num_slots)]
        self.status_lag = (2 if self.is_cuda else 0) if status_lag is None else status_lag
        if self.status_lag < 0:
            raise ValueError(f"status_lag={self.status_lag} must be >= 0")
        # A ring of status snapshots: frame t writes slot t % (lag + 1), read back at frame t + lag.
        ring = self.status_lag + 1
        self._snapshots = [torch.zeros(2, self.num_slots, dtype=torch.long, pin_memory=self.is_cuda)
                           for _ in range(ring)]
        self._events = [torch.cuda.Event() for _ in range(ring)] if self.is_cuda else [None] * ring
        self._unread: deque[_Snapshot] = deque()
        self._pending_copies: deque[_Copy] = deque()
        # Finished rows' frames reach the host through these pinned buffers, taken and given back,
        # never allocated per row (a pinned allocation synchronises the device): [N, P, K] int32.
        self._host_frames = torch.zeros(self.num_slots, self.max_positions, step.K, dtype=torch.int32,
                                        pin_memory=self.is_cuda)
        self._free_host_frames = list(range(self.num_slots))
        self._drained: list[Finished] = []  # rows whose copy was awaited early, for lack of a free buffer
        self.prefill_s = 0.0  # seconds the loop spent on cache moves and prefills (host time: launches on CUDA)

    # ------------------------------------------------------------------ the policy's state, as before the split

    @property
    def queue(self) -> deque[Job]:
        return self.policy.queue

    @queue.setter
    def queue(self, queue: deque[Job]) -> None:
        self.policy.queue = queue

    @property
    def rows(self) -> list[SlotRow | None]:
        return self.policy.rows

    @property
    def held(self):
        return self.policy.held

    @property
    def stats(self) -> SchedulerStats:
        return self.policy.stats

    @property
    def prefill(self) -> PrefillBuckets:
        return self.policy.prefill

    # ------------------------------------------------------------------ jobs in and out

    @torch.inference_mode()  # as the frames of `run` are: compiled code is specialised on it
    def prepare(self, sample: bool) -> None:
        """Compile (and on CUDA capture) the frame of this sampling mode in every attention
        bucket now, so neither happens mid-run."""
        if isinstance(self.run_frame, GraphedFrame):
            self.run_frame.capture(sample)
        else:
            self.step.warm(sample)

    def submit(self, job: Job) -> None:
        self.policy.submit(job)

    def cancel(self, key: Any) -> Cancelled | None:
        """Drop the job `key`, queued or admitted: a decoding row's slot is free for the next frame's
        admission, and nothing of it is delivered (None: the scheduler does not have it)."""
        cancelled = self.policy.cancel(key)
        if cancelled is not None and cancelled.slot is not None:
            self.step.release(self._slot_index[cancelled.slot])
        return cancelled

    def abort(self) -> None:
        """Drop every queued and running job (after an error mid-run), leaving the slots free."""
        for slot in self.policy.abort():
            self.step.release(self._slot_index[slot])
        self._unread.clear()
        self._pending_copies.clear()
        self._drained.clear()
        self._free_host_frames = list(range(self.num_slots))

    # ------------------------------------------------------------------ carrying out a plan

    @torch.inference_mode()
    def _admit(self) -> list[Finished]:
        """Carry out the policy's next plan; returns the jobs done without a slot (no frames to make)."""
        plan = self.policy.schedule()
        if not plan:
            return []  # the frame loop's usual case
        t = time.perf_counter()
        self._execute(plan)
        self.prefill_s += time.perf_counter() - t
        now = time.perf_counter()
        return [Finished(j.key, np.zeros((0, self.step.K), np.int16), "max_length", j.prompt_len, -1, j.submitted_s,
                         now, now, j.followed) for j in plan.empty]

    def _execute(self, plan: StepPlan) -> None:
        for move in plan.moves:
            self._move(move)
        for batch in plan.prefills:
            hidden = self._extend(batch) if batch.extend else self._prefill(batch)
            self._start_rows(batch.rows, hidden)

    def _move(self, move: CacheMove) -> None:
        """A cache row's positions set aside into a parked row, or brought back into a slot."""
        n = self.num_slots
        if move.src < n:
            self.model.park(move.src, move.dst - n, move.length)
        else:
            self.model.park(move.dst, move.src - n, move.length, back=True)

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return to_device(t, self.device)

    def _prefill(self, batch: PrefillBatch) -> torch.Tensor:
        """Prefill the batch's prompts into their slots at its bucketed shape; their last hidden states [N, Db]."""
        m = self.model
        jobs = [r.job for r in batch.rows]
        lens = [r.prompt_len for r in batch.rows]
        R, T = batch.shape
        # Right-padded rows and padding rows (r >= N) of text id 0: padding never precedes a valid
        # position, and padding rows write no cache row (`LeanCsm.prefill`).
        ids = torch.zeros(R, T, dtype=torch.long)
        for r, j in enumerate(jobs):
            ids[r, : lens[r]] = j.input_ids
        # Audio positions as flat indices into [R, T], in row-major order, with their frames [A, K].
        audio_index = torch.cat([j.is_audio.nonzero()[:, 0] + r * T for r, j in enumerate(jobs)])
        audio_frames = torch.cat([j.audio_frames for j in jobs])
        embeds = m.embed_prompt(self._to_device(ids), self._to_device(audio_index),
                                self._to_device(audio_frames))  # [R, T, Db]
        slots = self._to_device(torch.tensor([r.slot for r in batch.rows]))
        return m.prefill(embeds, self._to_device(torch.tensor(lens)), slots)

    def _extend(self, batch: PrefillBatch) -> torch.Tensor:
        """Prefill only the new positions of rows whose slot holds the first `kept` positions of
        their prompt: row r computes positions kept_r.. of its prompt, right-padded to the batch's
        [R, S], attending over the kept ones in its slot (`LeanCsm.extend`); their last hidden states."""
        m = self.model
        rows = batch.rows
        news = [r.prompt_len - r.kept for r in rows]
        R, S = batch.shape
        ids = torch.zeros(R, S, dtype=torch.long)
        pos = torch.arange(S).repeat(R, 1)  # [R, S]; padding rows sit at 0.. and write nothing
        audio_index, audio_frames, write_at, write_slots = [], [], [], []
        for i, (row, n) in enumerate(zip(rows, news)):
            j, kept = row.job, row.kept
            ids[i, :n] = j.input_ids[kept:]
            pos[i] += kept
            audio_index.append(j.is_audio[kept:].nonzero()[:, 0] + i * S)
            audio_frames.append(j.audio_frames[int(j.is_audio[:kept].sum()):])  # the new positions' frames
            write_at.append(torch.arange(n) + i * S)
            write_slots.append(torch.full((n,), row.slot))
        write_at = torch.cat(write_at)
        write = tuple(self._to_device(t) for t in (write_at, torch.cat(write_slots), pos.view(-1)[write_at]))
        embeds = m.embed_prompt(self._to_device(ids), self._to_device(torch.cat(audio_index)),
                                self._to_device(torch.cat(audio_frames)))  # [R, S, Db]
        read_slots = torch.tensor([r.slot for r in rows] + [rows[0].slot] * (R - len(rows)))  # [R]
        last = torch.tensor([i * S + n - 1 for i, n in enumerate(news)])  # [N]
        kv_len = self.step.kv_bucket(max(r.prompt_len for r in rows))
        return m.extend(embeds, self._to_device(pos), self._to_device(read_slots), write, self._to_device(last),
                        kv_len)

    def _start_rows(self, rows: tuple[SlotRow, ...], hidden: torch.Tensor) -> None:
        """Start decoding the prefilled rows from their last hidden states [N, Db]."""
        as_device = lambda values: self._to_device(torch.tensor(values))  # noqa: E731
        self.step.admit(as_device([r.slot for r in rows]), hidden, as_device([r.prompt_len for r in rows]),
                        as_device([r.cap for r in rows]), as_device([r.job.seed for r in rows]),
                        [r.job.sampling for r in rows])

    # ------------------------------------------------------------------ finishing

    def _collect(self, snapshot: _Snapshot) -> None:
        """Tell the policy which rows the snapshot's flags show stopped, and start their frames'
        way to the host."""
        status = snapshot.status
        stopped = (status[0] != RUNNING).nonzero()[:, 0].tolist()  # slots whose flag is set: not a scan of all
        if not stopped:
            return
        codes_now, lens_now = status[0].tolist(), status[1].tolist()
        slots = self.policy.slots  # a freed slot's flags stay set until its next row starts: skipped here
        ends = [RowEnd(slot, snapshot.frame_index, STOP_REASONS[codes_now[slot]], lens_now[slot]) for slot in stopped
                if slots[slot].row is not None]
        for row in self.policy.rows_ended(ends):
            buffer = self._host_buffer()
            self._host_frames[buffer, : row.fed].copy_(self.step.state.history[row.slot, : row.fed],
                                                       non_blocking=self.is_cuda)
            event = None
            if self.is_cuda:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
            self._pending_copies.append(_Copy(row, buffer, event))
            self.step.release(self._slot_index[row.slot])

    def _host_buffer(self) -> int:
        """A free pinned host buffer for a finished row's frames; when all are in use (more rows ended
        within a few frames than there are slots), the oldest copy is awaited and its row finished."""
        while not self._free_host_frames:
            finished = self._finish_copy(self._pending_copies.popleft())
            if finished is not None:
                self._drained.append(finished)
        return self._free_host_frames.pop()

    def _finish_copy(self, copy: _Copy) -> Finished | None:
        """The row of a copy that has reached the host (waited for here); its buffer is free again.
        None for a row cancelled meanwhile."""
        if copy.event is not None:
            copy.event.synchronize()
        row, job = copy.row, copy.row.job
        out = self._host_frames[copy.buffer, : row.fed]
        keys = None
        if self.policy.kv_continuation:  # the slot holds the prompt and the frames fed back, but never claims the
            # cache's last position, where the frames run after the row ended may write (positions clamp there)
            keys = np.concatenate([np.asarray(job.keys()), frame_keys(out.numpy())])[: self.max_positions - 1]
        codes = out[: row.frames].numpy().astype(np.int16)  # a copy: the buffer goes back
        self._free_host_frames.append(copy.buffer)
        if not self.policy.row_done(row, keys):
            return None
        return Finished(job.key, codes, row.reason, row.prompt_len, row.slot, job.submitted_s, row.started_s,
                        time.perf_counter(), job.followed)

    def _drain_copies(self, wait: bool) -> list[Finished]:
        """Rows whose codes have reached the host (wait: all of them), in the order they ended."""
        finished, self._drained = self._drained, []
        while self._pending_copies:
            event = self._pending_copies[0].event
            if event is not None and not wait and not event.query():
                break  # copies complete in order, on one stream
            done = self._finish_copy(self._pending_copies.popleft())
            if done is not None:
                finished.append(done)
        return finished

    # ------------------------------------------------------------------ the loop

    def _run_frame(self) -> None:
        """One frame for every slot, and a snapshot of its stop flags on its way to the host."""
        kv_len = self.step.kv_bucket(self.policy.positions_needed())  # at most max_positions
        self.run_frame(self.policy.sampling, kv_len)
        frame_index = self.stats.frames
        self.policy.frame_ran(kv_len)
        i = frame_index % len(self._snapshots)
        snapshot, event = self._snapshots[i], self._events[i]
        snapshot.copy_(self.step.state.status, non_blocking=self.is_cuda)
        if event is not None:
            event.record(torch.cuda.current_stream(self.device))
        self._unread.append(_Snapshot(event, snapshot, frame_index))

    def _read_snapshots(self, keep: int) -> None:
        """Collect the rows that ended in all but the newest `keep` unread frames."""
        while len(self._unread) > keep:
            snapshot = self._unread.popleft()
            if snapshot.event is not None:
                snapshot.event.synchronize()
            self._collect(snapshot)

    @staticmethod
    def _deliver(finished: list[Finished], on_finished: Callable[[Finished], None] | None) -> list[Finished]:
        for f in finished:
            if on_finished is not None:
                on_finished(f)
        return finished

    @torch.inference_mode()
    def run(self, on_finished: Callable[[Finished], None] | None = None,
            on_frame: Callable[[], None] | None = None) -> list[Finished]:
        """Run until the queue is empty and every slot is idle; returns results in finishing order.

        `on_finished(result)` is called as each row completes and may `submit()` more jobs;
        `on_frame()` after every frame (e.g. to decode finished rows now and then, or to take
        jobs and cancellations handed over from other threads).
        """
        with on_device(self.device):  # graph replays, events and pinned copies: the model's GPU's (`on_device`)
            return self._run(on_finished, on_frame)

    def _run(self, on_finished: Callable[[Finished], None] | None,
             on_frame: Callable[[], None] | None) -> list[Finished]:
        results: list[Finished] = []
        policy = self.policy
        while True:
            results += self._deliver(self._admit(), on_finished)
            if not policy.busy:
                self._read_snapshots(keep=0)  # rows may have ended in the frames not yet read
                results += self._deliver(self._drain_copies(wait=True), on_finished)
                if on_frame is not None and policy.any_reserved():
                    on_frame()  # a slot waits for a follow-up: let it come before the queue takes the slot
                if not policy.waiting and not policy.busy:
                    policy.idle()
                    break
                continue
            self._run_frame()
            self._read_snapshots(keep=self.status_lag)  # the newest `status_lag` frames stay queued on the device
            results += self._deliver(self._drain_copies(wait=False), on_finished)
            if on_frame is not None:
                on_frame()
        return results
