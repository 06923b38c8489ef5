"""Continuous batching of CSM rows over a fixed set of decoding slots.

This module owns the queue of prepared prompts (`Job`), slot bookkeeping, prefill
of newly admitted rows into free slots while other slots keep decoding, and pulling
finished rows out as soon as their stop rule fires (EOS frame, length cap, silence,
loop), so their slots are refilled on the next frame. Jobs may be submitted while it
runs (from the `on_finished` callback), e.g. a conversation's next turn.

A prefill holds at most `prefill_tokens` positions (rows x padded length), which bounds
its memory: an admission larger than that is split into several prefills. Its shape comes
from a small set of buckets (`PrefillBuckets`: lengths and rows rounded up to powers of
two), so the kernels it runs (and any plans they build per shape) are reused all run long;
padding rows write no cache row, padding positions sit after each row's last one, where
decoding writes before it reads. On CUDA the
host reads each frame's stop flags `status_lag` frames late (default 2) from pinned
memory, so the GPU always has frames queued and never waits on the host; a finished
row then sits frozen in its slot for that many frames. Its frames come back through pinned
host buffers allocated once. Nothing the loop does per frame scans the queue or every held
cache: admission looks at the queue only as far as free slots last, and the held caches are
indexed (`synth.engine.held_cache`). It knows nothing about text,
tokenizers or audio; of the `Engine` records it carries only each job's `SamplingParams`.

KV continuation: a slot's cache outlives its row (`synth.engine.held_cache`). A job whose
prompt starts with the positions a free slot holds (checked position by position; the job's
`continues` hint only names the row whose slot to check) is admitted to that slot and
prefills only its new positions (`_extend`), attending over the kept ones. The queue stays
in order: when another job takes the slot of a `followed` row, that row's cache is parked
first (`LeanCsm.park`, while a parked row is free) and its follow-up brings it back into
whichever slot is free. Optionally (`hold_frames`) a followed row's slot waits that many
frames for its follow-up; other jobs take slots that nobody waits for first, then a
reserved slot once its hold has lapsed, or at once when no row is decoding.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from synth.engine.frame_step import FrameStep, GraphedFrame, on_device, to_device
from synth.engine.held_cache import HeldCaches, frame_keys, position_keys
from synth.engine.interface import SamplingParams
from synth.engine.lean_csm import LeanCsm
from synth.engine.options import FastEngineOptions
from synth.engine.stop import RUNNING, STOP_REASONS


@dataclass
class Job:
    """One row to generate.

    input_ids: [T] text token ids of the prompt; audio positions hold any valid text id.
    audio_frames: [A, K] the frames embedded instead of text where `is_audio` [T] is True, one
      per audio position in order (context frames, and the all-EOS frame at `<|audio_eos|>`).
    """

    key: Any
    input_ids: torch.Tensor
    audio_frames: torch.Tensor
    is_audio: torch.Tensor
    max_frames: int
    sampling: SamplingParams
    seed: int = 0
    continues: Any = None  # the key of the row whose context this prompt extends: its slot is checked first
    followed: bool = False  # a follow-up will extend this row's context: keep its slot a while
    submitted_s: float = field(default_factory=time.perf_counter)

    def keys(self) -> torch.Tensor:
        """The prompt's position keys [T, 1 + K] (`synth.engine.held_cache.position_keys`)."""
        return position_keys(self.input_ids, self.audio_frames, self.is_audio)


@dataclass
class SlotRow:
    """The row a slot is decoding."""

    job: Job
    started_s: float
    first_frame: int  # the scheduler's frame count when the row started: its first frame's index
    prompt_len: int


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


@dataclass
class _PendingCopy:
    """A finished row's frames on their way to the host: history[slot, :fed] -> host buffer `buffer`."""

    event: torch.cuda.Event | None  # recorded after the copy (CUDA); None: already done
    buffer: int
    fed: int  # frames fed back to the backbone (the EOS frame too): what the held cache may claim
    row: SlotRow
    slot: int
    reason: str
    n: int  # frames in the result
    epoch: int  # the held cache's epoch of the slot when the row ended (-1: no KV continuation)


@dataclass
class SchedulerStats:
    frames: int = 0  # frame steps run (each computes every slot)
    slot_frames: int = 0  # frames x slots
    useful_frames: int = 0  # frames delivered in results
    prefills: int = 0
    prefill_rows: int = 0
    prefill_tokens: int = 0  # prompt positions prefilled (computed: kept positions of continued rows excluded)
    continued_rows: int = 0  # rows admitted to a slot whose cache held the start of their prompt
    kept_positions: int = 0  # prompt positions those rows took from the cache instead of computing them
    prefill_positions: int = 0  # positions computed: rows x length of each prefill's bucketed shape
    attended_positions: int = 0  # sum over frames of the backbone's attention length (its bucket)


PREFILL_MIN_LENGTH = 64  # the shortest prefill length bucket; the others are its powers-of-two multiples


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclass(frozen=True)
class PrefillBuckets:
    """The shapes a prefill runs at, and how many rows one may hold.

    A prefill of N prompts whose longest has L positions runs at (R, T): T is L rounded up to
    a power-of-two multiple of PREFILL_MIN_LENGTH (at most max_positions), R is N rounded up
    to a power of two (at most the row cap). The row cap keeps R x T within `tokens`, the
    budget, so a prefill's memory is bounded; `tokens` is raised to the longest length bucket
    when below it, so any prompt fits.
    """

    max_positions: int
    max_rows: int
    tokens: int

    def __post_init__(self):
        if self.tokens < 1 or self.max_rows < 1:
            raise ValueError(f"prefill tokens={self.tokens} and rows={self.max_rows} must be >= 1")
        object.__setattr__(self, "tokens", max(self.tokens, self.length(self.max_positions)))

    def length(self, longest: int) -> int:
        """The length bucket of a prefill whose longest prompt has `longest` positions."""
        return min(PREFILL_MIN_LENGTH * _next_power_of_two(-(-longest // PREFILL_MIN_LENGTH)), self.max_positions)

    def row_cap(self, length_bucket: int) -> int:
        """Most rows a prefill of this length bucket may hold (at least 1)."""
        return min(self.max_rows, self.tokens // length_bucket)

    def shape(self, num_rows: int, longest: int) -> tuple[int, int]:
        """(R, T) of a prefill of `num_rows` prompts (at most the row cap), the longest `longest` long."""
        T = self.length(longest)
        cap = self.row_cap(T)
        assert 1 <= num_rows <= cap, (num_rows, longest, cap)
        return min(_next_power_of_two(num_rows), cap), T

    def all_shapes(self) -> set[tuple[int, int]]:
        """Every shape `shape` can give."""
        lengths = {self.length(PREFILL_MIN_LENGTH << i) for i in range(self.max_positions.bit_length())}
        return {self.shape(n, T) for T in lengths for n in range(1, self.row_cap(T) + 1)}


class Scheduler:
    """Runs jobs through a FrameStep with `num_slots` rows decoding concurrently."""

    def __init__(self, model: LeanCsm, step: FrameStep, *, use_cuda_graph: bool | None = None,
                 max_prefill_rows: int | None = None, min_admit: int | None = None, status_lag: int | None = None,
                 prefill_tokens: int = FastEngineOptions.prefill_tokens,
                 kv_continuation: bool = FastEngineOptions.kv_continuation,
                 hold_frames: int = FastEngineOptions.hold_frames, park_rows: int | None = None):
        """min_admit: while rows are decoding, wait until this many slots are free before a
        prefill (default num_slots // 32, at least 1): fewer, larger prefills.
        status_lag: frames the host reads the stop flags behind the newest queued frame
        (default 2 on CUDA, 0 on CPU, where frames run synchronously anyway).
        prefill_tokens: most positions (rows x bucketed length) in one prefill; raised to the
        longest length bucket when below it, so that any prompt fits.
        kv_continuation: admit a job to a free slot whose cache holds the start of its prompt and
        prefill only the rest; hold_frames: frames a `followed` row's slot waits for its follow-up;
        park_rows: most slot caches that can be set aside for follow-ups, each allocated on first use
        (None: num_slots)."""
        self.model, self.step = model, step
        self.num_slots, self.max_positions = step.num_slots, step.max_positions
        self.device = step.state.hidden.device
        self.is_cuda = self.device.type == "cuda"
        use_cuda_graph = self.is_cuda if use_cuda_graph is None else use_cuda_graph
        self.run_frame = GraphedFrame(step) if use_cuda_graph else step.frame
        self.prefill = PrefillBuckets(self.max_positions, min(max_prefill_rows or self.num_slots, self.num_slots),
                                      prefill_tokens)
        self.min_admit = min_admit or max(1, self.num_slots // 32)
        self._slot_index = [torch.tensor([i], device=self.device) for i in range(self.num_slots)]
        self.queue: deque[Job] = deque()
        self.kv_continuation, self.hold_frames = kv_continuation, hold_frames
        self.park_rows = (self.num_slots if park_rows is None else park_rows) if kv_continuation else 0
        model.setup_parking(self.park_rows)
        self.held = HeldCaches(self.num_slots, self.park_rows)
        self.rows: list[SlotRow | None] = [None] * self.num_slots  # slot -> its row, None when free
        # max over busy slots of prompt_len - first_frame: frame t then writes at most position
        # _pos_base + t, so the backbone attends over a bucket of at least _pos_base + t + 1
        self._pos_base = -1
        self.stats = SchedulerStats()
        self.status_lag = (2 if self.is_cuda else 0) if status_lag is None else status_lag
        if self.status_lag < 0:
            raise ValueError(f"status_lag={self.status_lag} must be >= 0")
        # A ring of status snapshots: frame t writes slot t % (lag + 1), read back at frame t + lag.
        ring = self.status_lag + 1
        self._snapshots = [torch.zeros(2, self.num_slots, dtype=torch.long, pin_memory=self.is_cuda)
                           for _ in range(ring)]
        self._events = [torch.cuda.Event() for _ in range(ring)] if self.is_cuda else [None] * ring
        self._unread: deque[tuple[torch.cuda.Event | None, torch.Tensor, int]] = deque()  # (event, snapshot, frame)
        # (event, frames fed [F, K] on their way to the host, row, slot, stop reason, result frames, held epoch)
        self._pending_copies: deque[_PendingCopy] = deque()
        # Finished rows' frames reach the host through these pinned buffers, taken and given back,
        # never allocated per row (a pinned allocation synchronises the device): [N, P, K] int32.
        self._host_frames = torch.zeros(self.num_slots, self.max_positions, step.K, dtype=torch.int32,
                                        pin_memory=self.is_cuda)
        self._free_host_frames = list(range(self.num_slots))
        self._drained: list[Finished] = []  # rows whose copy was awaited early, for lack of a free buffer
        self._num_busy = 0  # slots decoding a row
        self._num_sampled = 0  # of them, rows that sample

    @torch.inference_mode()  # as the frames of `run` are: compiled code is specialised on it
    def prepare(self, sample: bool) -> None:
        """Compile (and on CUDA capture) the frame of this sampling mode in every attention
        bucket now, so neither happens mid-run."""
        if isinstance(self.run_frame, GraphedFrame):
            self.run_frame.capture(sample)
        else:
            self.step.warm(sample)

    def submit(self, job: Job) -> None:
        T = int(job.input_ids.shape[0])
        if T >= self.max_positions:
            raise ValueError(f"job {job.key!r}: prompt of {T} tokens leaves no room in {self.max_positions} positions")
        self.queue.append(job)

    def abort(self) -> None:
        """Drop every queued and running job (after an error mid-run), leaving the slots free."""
        self.queue.clear()
        self.held.clear()
        for slot, row in enumerate(self.rows):
            if row is not None:
                self.step.release(self._slot_index[slot])
                self._set_row(slot, None)
        self._unread.clear()
        self._pending_copies.clear()
        self._drained.clear()
        self._free_host_frames = list(range(self.num_slots))
        self._update_pos_base()

    # ------------------------------------------------------------------ admission

    def _busy(self) -> bool:
        return self._num_busy > 0

    def _set_row(self, slot: int, row: SlotRow | None) -> None:
        """The slot's row from now on (None: free), with the counts the frame loop reads."""
        old = self.rows[slot]
        for r, sign in ((old, -1), (row, 1)):
            if r is not None:
                self._num_busy += sign
                self._num_sampled += sign * r.job.sampling.do_sample
        self.rows[slot] = row

    @torch.inference_mode()
    def _admit(self) -> list[Finished]:
        """Prefill queued jobs into free slots; returns the jobs done without one (no frames to make).

        A job continues in the free slot whose cache holds the start of its prompt; the others take
        free slots that no hold keeps (see the module docstring), or wait in the queue, in order."""
        finished: list[Finished] = []
        num_free, busy = self.num_slots - self._num_busy, self._num_busy > 0
        if not self.queue or not num_free or (busy and num_free < self.min_admit and len(self.queue) >= self.min_admit):
            return finished  # the frame loop's usual case: nothing is looked at
        free = [i for i, row in enumerate(self.rows) if row is None]
        frame = self.stats.frames if busy else None  # None: nothing is decoding, so no hold keeps a slot
        fresh: list[tuple[int, Job]] = []
        continued: list[tuple[int, Job, int]] = []  # (slot, job, prompt positions its slot holds)
        waiting: list[Job] = []
        queue = self.queue
        # In order: a follow-up does not jump the queue (see the module docstring). Only as far as
        # free slots last: the rest of the queue is not looked at, however long it is.
        while queue and free:
            job = queue.popleft()
            if job.max_frames <= 0:  # nothing to generate: done without a slot
                now = time.perf_counter()
                finished.append(Finished(job.key, np.zeros((0, self.step.K), np.int16), "max_length",
                                         int(job.input_ids.shape[0]), -1, job.submitted_s, now, now))
                continue
            own = self.held.slot_of(job.continues) if self.kv_continuation and free else None
            parked = own is not None and own >= self.num_slots
            kept = self.held.reusable(own, job.keys()) if own in free or parked else 0
            slot = own if kept and not parked else self._open_slot(free, own, frame)
            if slot is None:
                waiting.append(job)
                continue
            free.remove(slot)
            if slot != own:
                self._set_aside(slot)
            if kept and parked:  # bring the parked cache back into the slot: its kept positions
                self.model.park(slot, own - self.num_slots, kept, back=True)
                self.held.move(own, slot)
            self.held.take(slot)
            if kept:
                continued.append((slot, job, kept))
            else:
                fresh.append((slot, job))
        queue.extendleft(reversed(waiting))
        for batch in self._batches(fresh, lambda item: int(item[1].input_ids.shape[0])):
            self._prefill(batch)
        for batch in self._batches(continued, lambda item: int(item[1].input_ids.shape[0]) - item[2]):
            self._extend(batch)
        return finished

    def _set_aside(self, slot: int) -> None:
        """Park the cache in `slot` before a new row overwrites it, if a follow-up will want it and
        a parked row is free."""
        row = self.held.to_park(slot)
        if row is not None:
            self.model.park(slot, row - self.num_slots, int(self.held.held[slot].keys.shape[0]))
            self.held.move(slot, row)

    def _open_slot(self, free: list[int], own: int | None, frame: int | None) -> int | None:
        """A free slot for a job that continues none: its own held slot if free, else one that no
        hold keeps (at scheduler frame `frame`; None: none does), those holding no cache first,
        then the caches left longest ago."""
        if own in free:
            return own
        open_ = [s for s in free if frame is None or not self.held.reserved(s, frame)]
        held = self.held.held
        return min(open_, key=lambda s: (held[s] is not None, held[s].reserved_until if held[s] else 0), default=None)

    def _batches(self, items: list, length: Callable[[Any], int]) -> list[list]:
        """`items` in order as prefills whose bucketed shape stays within the budget; length(item):
        the positions it computes."""
        batches: list[list] = []
        batch: list = []
        longest = 0
        for item in items:
            n = max(longest, length(item))
            if batch and len(batch) + 1 > self.prefill.row_cap(self.prefill.length(n)):
                batches.append(batch)
                batch, n = [], length(item)
            batch.append(item)
            longest = n
        return batches + ([batch] if batch else [])

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        return to_device(t, self.device)

    def _prefill(self, batch: list[tuple[int, Job]]) -> None:
        """Prefill `batch` (at most the row cap of its length bucket) at its bucketed shape."""
        m = self.model
        lens = [int(j.input_ids.shape[0]) for _, j in batch]
        N = len(batch)
        R, T = self.prefill.shape(N, max(lens))
        # Right-padded rows and padding rows (r >= N) of text id 0: padding never precedes a valid
        # position, and padding rows write no cache row (`LeanCsm.prefill`).
        ids = torch.zeros(R, T, dtype=torch.long)
        for r, (_, j) in enumerate(batch):
            ids[r, : lens[r]] = j.input_ids
        # Audio positions as flat indices into [R, T], in row-major order, with their frames [A, K].
        audio_index = torch.cat([j.is_audio.nonzero()[:, 0] + r * T for r, (_, j) in enumerate(batch)])
        audio_frames = torch.cat([j.audio_frames for _, j in batch])
        embeds = m.embed_prompt(self._to_device(ids), self._to_device(audio_index),
                                self._to_device(audio_frames))  # [R, T, Db]
        slots = self._to_device(torch.tensor([s for s, _ in batch]))
        hidden = m.prefill(embeds, self._to_device(torch.tensor(lens)), slots)
        self._start_rows(batch, hidden, computed=sum(lens), computed_positions=R * T)

    def _extend(self, batch: list[tuple[int, Job, int]]) -> None:
        """Prefill only the new positions of jobs whose slot holds the first `kept` positions of
        their prompt: row r computes positions kept_r.. of its prompt, right-padded to a bucketed
        [R, S], attending over the kept ones in its slot (`LeanCsm.extend`)."""
        m = self.model
        news = [int(j.input_ids.shape[0]) - kept for _, j, kept in batch]
        N = len(batch)
        R, S = self.prefill.shape(N, max(news))
        ids = torch.zeros(R, S, dtype=torch.long)
        pos = torch.arange(S).repeat(R, 1)  # [R, S]; padding rows sit at 0.. and write nothing
        audio_index, audio_frames, write_at, write_slots = [], [], [], []
        for r, ((slot, j, kept), n) in enumerate(zip(batch, news)):
            ids[r, :n] = j.input_ids[kept:]
            pos[r] += kept
            audio_index.append(j.is_audio[kept:].nonzero()[:, 0] + r * S)
            audio_frames.append(j.audio_frames[int(j.is_audio[:kept].sum()):])  # the new positions' frames
            write_at.append(torch.arange(n) + r * S)
            write_slots.append(torch.full((n,), slot))
        write_at = torch.cat(write_at)
        write = tuple(self._to_device(t) for t in (write_at, torch.cat(write_slots), pos.view(-1)[write_at]))
        embeds = m.embed_prompt(self._to_device(ids), self._to_device(torch.cat(audio_index)),
                                self._to_device(torch.cat(audio_frames)))  # [R, S, Db]
        read_slots = torch.tensor([s for s, _, _ in batch] + [batch[0][0]] * (R - N))  # [R]
        last = torch.tensor([r * S + n - 1 for r, n in enumerate(news)])  # [N]
        kv_len = self.step.kv_bucket(max(kept + n for (_, _, kept), n in zip(batch, news)))
        hidden = m.extend(embeds, self._to_device(pos), self._to_device(read_slots), write, self._to_device(last),
                          kv_len)
        self._start_rows([(s, j) for s, j, _ in batch], hidden, computed=sum(news), computed_positions=R * S)
        self.stats.continued_rows += N
        self.stats.kept_positions += sum(kept for _, _, kept in batch)

    def _start_rows(self, batch: list[tuple[int, Job]], hidden: torch.Tensor, *, computed: int,
                    computed_positions: int) -> None:
        """Start decoding the prefilled `batch` from its last hidden states [N, Db]. computed: prompt
        positions the prefill computed; computed_positions: the same with its bucketed padding."""
        lens = [int(j.input_ids.shape[0]) for _, j in batch]
        slots = self._to_device(torch.tensor([s for s, _ in batch]))
        caps = torch.tensor([min(j.max_frames, self.max_positions - n) for (_, j), n in zip(batch, lens)])
        seeds = torch.tensor([j.seed for _, j in batch])
        self.step.admit(slots, hidden, self._to_device(torch.tensor(lens)), self._to_device(caps),
                        self._to_device(seeds), [j.sampling for _, j in batch])
        now = time.perf_counter()
        for (s, j), n in zip(batch, lens):
            self._set_row(s, SlotRow(j, started_s=now, first_frame=self.stats.frames, prompt_len=n))
        self._update_pos_base()
        self.stats.prefills += 1
        self.stats.prefill_rows += len(batch)
        self.stats.prefill_tokens += computed
        self.stats.prefill_positions += computed_positions

    def _update_pos_base(self) -> None:
        self._pos_base = max((row.prompt_len - row.first_frame for row in self.rows if row is not None), default=-1)

    def _kv_len(self) -> int:
        """The attention bucket for the next frame: covers the newest position of every busy slot."""
        return self.step.kv_bucket(self._pos_base + self.stats.frames + 1)  # at most max_positions

    # ------------------------------------------------------------------ finishing

    def _collect(self, status: torch.Tensor, frame_index: int) -> None:
        """status: [2, B] host copy of (stop_code, result_len) taken after frame `frame_index`."""
        stopped = (status[0] != RUNNING).nonzero()[:, 0].tolist()  # slots whose flag is set: not a scan of all
        if not stopped:
            return
        codes_now, lens_now = status[0].tolist(), status[1].tolist()
        released = False
        for slot in stopped:
            row = self.rows[slot]
            if row is None or frame_index < row.first_frame:  # free, or stale: the flags are its previous row's
                continue
            n, reason = lens_now[slot], STOP_REASONS[codes_now[slot]]
            epoch = -1
            fed = n  # frames fed back to the backbone that the held cache may claim: the EOS frame too
            if self.kv_continuation:
                fed = min(n + (reason == "eos"), self.max_positions)
                until = self.stats.frames + self.hold_frames if row.job.followed else -1
                epoch = self.held.ended(slot, row.job.key, until, row.job.followed)
            buffer = self._host_buffer()
            self._host_frames[buffer, :fed].copy_(self.step.state.history[slot, :fed], non_blocking=self.is_cuda)
            event = None
            if self.is_cuda:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
            self._pending_copies.append(_PendingCopy(event, buffer, fed, row, slot, reason, n, epoch))
            self.step.release(self._slot_index[slot])
            self._set_row(slot, None)
            self.stats.useful_frames += n
            released = True
        if released:
            self._update_pos_base()

    def _host_buffer(self) -> int:
        """A free pinned host buffer for a finished row's frames; when all are in use (more rows ended
        within a few frames than there are slots), the oldest copy is awaited and its row finished."""
        if not self._free_host_frames:
            self._drained.append(self._finish_copy(self._pending_copies.popleft()))
        return self._free_host_frames.pop()

    def _finish_copy(self, copy: "_PendingCopy") -> Finished:
        """The row of a copy that has reached the host (waited for here); its buffer is free again."""
        if copy.event is not None:
            copy.event.synchronize()
        out = self._host_frames[copy.buffer, : copy.fed]
        job = copy.row.job
        if self.kv_continuation:  # the slot holds the prompt and the frames fed back, but never claims the
            # cache's last position, where the frames run after the row ended may write (positions clamp there)
            keys = torch.cat([job.keys(), frame_keys(out)])[: self.max_positions - 1]
            self.held.record(copy.slot, copy.epoch, keys)
        codes = out[: copy.n].numpy().astype(np.int16)  # a copy: the buffer goes back
        self._free_host_frames.append(copy.buffer)
        return Finished(job.key, codes, copy.reason, int(job.input_ids.shape[0]), copy.slot, job.submitted_s,
                        copy.row.started_s, time.perf_counter())

    def _drain_copies(self, wait: bool) -> list[Finished]:
        """Rows whose codes have reached the host (wait: all of them), in the order they ended."""
        finished, self._drained = self._drained, []
        while self._pending_copies:
            event = self._pending_copies[0].event
            if event is not None and not wait and not event.query():
                break  # copies complete in order, on one stream
            finished.append(self._finish_copy(self._pending_copies.popleft()))
        return finished

    # ------------------------------------------------------------------ the loop

    def _run_frame(self) -> None:
        """One frame for every slot, and a snapshot of its stop flags on its way to the host."""
        kv_len = self._kv_len()
        self.run_frame(self._num_sampled > 0, kv_len)
        self.stats.frames += 1
        self.stats.attended_positions += kv_len
        self.stats.slot_frames += self.num_slots
        i = (self.stats.frames - 1) % len(self._snapshots)
        snapshot, event = self._snapshots[i], self._events[i]
        snapshot.copy_(self.step.state.status, non_blocking=self.is_cuda)
        if event is not None:
            event.record(torch.cuda.current_stream(self.device))
        self._unread.append((event, snapshot, self.stats.frames - 1))

    def _read_snapshots(self, keep: int) -> None:
        """Collect the rows that ended in all but the newest `keep` unread frames."""
        while len(self._unread) > keep:
            event, snapshot, frame_index = self._unread.popleft()
            if event is not None:
                event.synchronize()
            self._collect(snapshot, frame_index)

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
        `on_frame()` after every frame (e.g. to decode finished rows now and then).
        """
        with on_device(self.device):  # graph replays, events and pinned copies: the model's GPU's (`on_device`)
            return self._run(on_finished, on_frame)

    def _run(self, on_finished: Callable[[Finished], None] | None,
             on_frame: Callable[[], None] | None) -> list[Finished]:
        results: list[Finished] = []
        while True:
            results += self._deliver(self._admit(), on_finished)
            if not self._busy():
                self._read_snapshots(keep=0)  # rows may have ended in the frames not yet read
                results += self._deliver(self._drain_copies(wait=True), on_finished)
                if on_frame is not None and self.held.any_reserved(self.stats.frames):
                    on_frame()  # a slot waits for a follow-up: let it come before the queue takes the slot
                if not self.queue and not self._busy():
                    break
                continue
            self._run_frame()
            self._read_snapshots(keep=self.status_lag)  # the newest `status_lag` frames stay queued on the device
            results += self._deliver(self._drain_copies(wait=False), on_finished)
            if on_frame is not None:
                on_frame()
        return results
