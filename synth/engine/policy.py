"""The fast engine's scheduling policy: which queued row runs in which slot, and when.

This module owns the decisions of continuous batching and none of their execution: the
queue of jobs (first come, first served, or by the work a row's chain has left:
`by_priority`), each slot's host-side record (`Slot`: the row decoding in it and, as a
`synth.engine.held_cache.CacheRow`, what its KV cache holds once the row has left), admission
into free slots (holds, KV continuation, parking a cache that a follow-up will want and
bringing it back, prefill batches in bucketed shapes: `PrefillBuckets`), speculative rows
(admitted only to slots no plain row waits for), cancellation, and the counts that say where
the slot-frames went (`SchedulerStats`). Each decision is a typed record: `schedule()` returns
a `StepPlan` (cache moves, then prefill batches of `SlotRow`s, and jobs done without a slot),
`cancel()` a `Cancelled`, and the executor (`synth.engine.scheduler.Scheduler`) carries them
out on the model, then reports back what the device did (`frame_ran`, `rows_ended`,
`row_done`). It imports no torch, so it is tested without a model
(`tests/engine/test_policy.py`); prompt arrays ride in each `Job` untouched, read only for
their length and position keys. It knows nothing about text, audio, models or devices.

Admission, in order: a queued job whose prompt starts with what a free slot's cache holds (the
job's `continues` hint names the row whose slot to check; the keys decide) is admitted there
and prefills only its new positions; when another job takes the slot of a `followed` row, that
row's cache is parked first (while a parked row is free) and its follow-up brings it back into
whichever slot is free. Optionally (`hold_frames`) a followed row's slot waits that many
frames for its follow-up; other jobs take slots nobody waits for first, then a reserved slot
once its hold has lapsed, or at once when no row is decoding. Admission looks at the queue only
as far as free slots last.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from synth.engine.held_cache import CacheRow, HeldCaches, position_keys
from synth.engine.interface import SamplingParams

PREFILL_MIN_LENGTH = 64  # the shortest prefill length bucket; the others are its powers-of-two multiples


@dataclass(eq=False)
class Job:
    """One row to generate.

    input_ids: [T] text token ids of the prompt; audio positions hold any valid text id.
    audio_frames: [A, K] the frames embedded instead of text where `is_audio` [T] is True, one
      per audio position in order (context frames, and the all-EOS frame at `<|audio_eos|>`).
    Torch tensors in the engine; the policy reads only their length and position keys.
    """

    key: Any
    input_ids: Any
    audio_frames: Any
    is_audio: Any
    max_frames: int
    sampling: SamplingParams
    seed: int = 0
    continues: Any = None  # the key of the row whose context this prompt extends: its slot is checked first
    followed: bool = False  # a follow-up will extend this row's context: keep its cache a while
    chain_frames: int = 0  # frames this row and the rest of its chain may generate (0: unknown)
    speculative: bool = False  # admitted only to slots no plain job waits for (a turn before its take's verdict)
    submitted_s: float = field(default_factory=time.perf_counter)

    @property
    def prompt_len(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def work(self) -> int:
        """Frames this row and what its chain has left may generate: its place in a queue by priority."""
        return max(self.chain_frames, self.max_frames)

    def keys(self):
        """The prompt's position keys [T, 1 + K] (`synth.engine.held_cache.position_keys`)."""
        return position_keys(self.input_ids, self.audio_frames, self.is_audio)


@dataclass(eq=False)
class SlotRow:
    """A row's life in a slot, from admission to its frames reaching the host: the one record of
    it that goes from the policy to the executor and back."""

    job: Job
    slot: int
    started_s: float
    first_frame: int  # the scheduler's frame count when the row started: its first frame's index
    prompt_len: int
    cap: int  # frames it may generate: its max_frames, within the positions its prompt leaves
    kept: int = 0  # prompt positions its slot's cache held already (KV continuation; 0: a full prefill)
    reason: str | None = None  # why it stopped (None: still decoding)
    frames: int = 0  # frames in its result
    fed: int = 0  # frames fed back to the backbone that its held cache may claim (the EOS frame too)
    epoch: int = -1  # its slot's held-cache epoch when it ended (-1: no KV continuation)
    cancelled: bool = False


@dataclass(eq=False)
class Slot(CacheRow):
    """One decoding slot as the host knows it: the row decoding in it (None: free) and, as a
    `CacheRow`, what its cache holds for a follow-up once a row has left it. Its device state is
    row `index` of `FrameStep.state`, its cache row `index` of `LeanCsm`'s caches."""

    index: int = 0
    row: SlotRow | None = None


@dataclass
class SchedulerStats:
    frames: int = 0  # frame steps run (each computes every slot)
    slot_frames: int = 0  # frames x slots
    useful_frames: int = 0  # frames delivered in results
    busy_slot_frames: int = 0  # slot-frames with a row in the slot (the rest idle, below)
    idle_queued: int = 0  # idle slot-frames while a job waited (min_admit, holds)
    idle_between_turns: int = 0  # idle slot-frames with nothing queued while a followed row's follow-up was due
    idle_drain: int = 0  # idle slot-frames with nothing queued or due: the run's tail
    prefills: int = 0
    prefill_rows: int = 0
    prefill_tokens: int = 0  # prompt positions prefilled (computed: kept positions of continued rows excluded)
    continued_rows: int = 0  # rows admitted to a slot whose cache held the start of their prompt
    kept_positions: int = 0  # prompt positions those rows took from the cache instead of computing them
    prefill_positions: int = 0  # positions computed: rows x length of each prefill's bucketed shape
    attended_positions: int = 0  # sum over frames of the backbone's attention length (its bucket)
    parked: int = 0  # caches set aside into a parked row
    unparked: int = 0  # parked caches brought back into a slot
    cancelled_rows: int = 0  # rows cancelled: queued, decoding or finished but not yet delivered
    discarded_frames: int = 0  # frames those rows had generated: work thrown away


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

    def batches(self, items: list, length: Callable[[Any], int]) -> list[list]:
        """`items` in order as prefills whose bucketed shape stays within the budget; length(item):
        the positions it computes."""
        batches: list[list] = []
        batch: list = []
        longest = 0
        for item in items:
            n = max(longest, length(item))
            if batch and len(batch) + 1 > self.row_cap(self.length(n)):
                batches.append(batch)
                batch, n = [], length(item)
            batch.append(item)
            longest = n
        return batches + ([batch] if batch else [])


# ---------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class CacheMove:
    """Copy `length` positions of one backbone cache row to another, before any prefill: a slot's
    cache set aside into a parked row (src < num_slots <= dst), or a parked cache brought back
    into a slot (dst < num_slots <= src). Indices num_slots.. are parked rows."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class PrefillBatch:
    """Rows prefilled together at one bucketed shape (rows, length), padding rows writing nothing.
    extend: each row's slot holds the first `row.kept` positions of its prompt, and only the
    rest is computed (`length` covers those), attending over the kept ones."""

    rows: tuple[SlotRow, ...]
    shape: tuple[int, int]
    extend: bool


@dataclass(frozen=True)
class StepPlan:
    """What the executor does before the next frame, in this order: the cache moves, then the
    prefills (each batch's rows start decoding from their last hidden state). `empty`: jobs with
    nothing to generate, done without a slot."""

    moves: tuple[CacheMove, ...] = ()
    prefills: tuple[PrefillBatch, ...] = ()
    empty: tuple[Job, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.moves or self.prefills or self.empty)


NOTHING = StepPlan()


@dataclass(frozen=True)
class Cancelled:
    """A cancelled job: where it was ("queued", "decoding", or "ending": finished, its frames on
    their way to the host, dropped there), the slot the executor must release now (decoding
    only), and the frames it had generated (counted to the frame it was cancelled)."""

    key: Any
    where: str
    slot: int | None = None
    frames: int = 0


@dataclass(frozen=True)
class RowEnd:
    """The device's word that the row in `slot` stopped after frame `frame_index`: why, and how
    many frames its result has."""

    slot: int
    frame_index: int
    reason: str
    frames: int


# --------------------------------------------------------------------------------------- policy


class SchedulePolicy:
    """Admission, holds, parking, continuation, cancellation for `num_slots` slots; see the module
    docstring. Its calls come from one thread (the executor's frame loop)."""

    def __init__(self, num_slots: int, max_positions: int, *, prefill: PrefillBuckets, min_admit: int | None = None,
                 kv_continuation: bool = True, hold_frames: int = 0, park_rows: int = 0, by_priority: bool = False):
        """min_admit: while rows are decoding, wait until this many slots are free before a prefill
        (default num_slots // 32, at least 1). park_rows: cache rows a followed row's cache may be
        set aside in (only with kv_continuation). by_priority: order the queue by each job's `work`
        (most first; equal work first come, first served) instead of arrival alone."""
        self.num_slots, self.max_positions, self.prefill = num_slots, max_positions, prefill
        self.min_admit = min_admit or max(1, num_slots // 32)
        self.kv_continuation, self.hold_frames, self.by_priority = kv_continuation, hold_frames, by_priority
        self.park_rows = park_rows if kv_continuation else 0
        self.queue: deque[Job] = deque()
        self.speculative: deque[Job] = deque()
        self.slots = [Slot(index=i) for i in range(num_slots)]
        self.held = HeldCaches(num_slots, self.park_rows, slots=self.slots)
        self.stats = SchedulerStats()
        self._live: dict[Any, SlotRow] = {}  # admitted rows whose frames have not reached the host, by key
        self._awaited: set[Any] = set()  # followed rows that ended, whose follow-up has not been submitted
        self._num_busy = 0  # slots decoding a row
        self._num_sampled = 0  # of them, rows that sample
        # max over busy slots of prompt_len - first_frame: frame t then writes at most position
        # _pos_base + t, so the backbone attends over at least _pos_base + t + 1 positions
        self._pos_base = -1

    # ------------------------------------------------------------------ what the executor reads

    @property
    def rows(self) -> list[SlotRow | None]:
        """Each slot's row (None: free)."""
        return [slot.row for slot in self.slots]

    @property
    def busy(self) -> bool:
        return self._num_busy > 0

    @property
    def sampling(self) -> bool:
        """Whether any decoding row samples (the frame's sampling mode)."""
        return self._num_sampled > 0

    @property
    def waiting(self) -> int:
        """Jobs queued, plain and speculative."""
        return len(self.queue) + len(self.speculative)

    def positions_needed(self) -> int:
        """Positions the next frame's attention must cover: every busy slot's newest one."""
        return self._pos_base + self.stats.frames + 1

    def any_reserved(self) -> bool:
        """Whether a slot waits for a follow-up now (`hold_frames`)."""
        return self.held.any_reserved(self.stats.frames)

    # ------------------------------------------------------------------ jobs in

    def submit(self, job: Job) -> None:
        if job.prompt_len >= self.max_positions:
            raise ValueError(f"job {job.key!r}: prompt of {job.prompt_len} tokens leaves no room in "
                             f"{self.max_positions} positions")
        self._awaited.discard(job.continues)
        queue = self.speculative if job.speculative else self.queue
        if not self.by_priority or not queue or queue[-1].work >= job.work:
            queue.append(job)  # the usual case: no search
        else:
            queue.insert(bisect.bisect_right(queue, -job.work, key=lambda j: -j.work), job)

    def cancel(self, key: Any) -> Cancelled | None:
        """Drop the job `key` wherever it is (None: neither queued nor admitted, e.g. delivered)."""
        for queue in (self.queue, self.speculative):
            index = next((i for i, job in enumerate(queue) if job.key == key), None)
            if index is not None:
                del queue[index]
                self.stats.cancelled_rows += 1
                return Cancelled(key, "queued")
        row = self._live.get(key)
        if row is None or row.cancelled:
            return None
        self._awaited.discard(key)
        if row.reason is not None:  # ended: its frames are dropped when they reach the host (`row_done`)
            row.cancelled = True
            self.held.forget(row.slot, row.epoch)
            self.discard(row.frames)
            return Cancelled(key, "ending", None, row.frames)
        frames = min(self.stats.frames - row.first_frame, row.cap)  # decoding: its slot is free from now on
        del self._live[key]
        self._set_row(row.slot, None)
        self._update_pos_base()
        self.stats.cancelled_rows += 1
        self.stats.discarded_frames += frames
        return Cancelled(key, "decoding", row.slot, frames)

    def discard(self, frames: int) -> None:
        """A row that had ended was cancelled before its delivery: its frames are thrown away."""
        self.stats.cancelled_rows += 1
        self.stats.useful_frames -= frames
        self.stats.discarded_frames += frames

    # ------------------------------------------------------------------ admission

    def schedule(self, now: float | None = None) -> StepPlan:
        """Admit queued jobs to free slots (see the module docstring); `NOTHING` in the frame loop's
        usual case, where nothing is looked at."""
        num_free, busy, waiting = self.num_slots - self._num_busy, self.busy, self.waiting
        if not waiting or not num_free or (busy and num_free < self.min_admit and waiting >= self.min_admit):
            return NOTHING
        free = [slot.index for slot in self.slots if slot.row is None]
        frame = self.stats.frames if busy else None  # None: nothing is decoding, so no hold keeps a slot
        moves: list[CacheMove] = []
        admitted: list[SlotRow] = []
        empty: list[Job] = []
        now = time.perf_counter() if now is None else now
        for queue in (self.queue, self.speculative):  # speculative jobs take what plain ones leave
            waiting_jobs: list[Job] = []
            # In order, only as far as free slots last: the rest of the queue is not looked at.
            while queue and free:
                job = queue.popleft()
                if job.max_frames <= 0:  # nothing to generate: done without a slot
                    empty.append(job)
                    continue
                row = self._place(job, free, frame, moves, now)
                if row is None:
                    waiting_jobs.append(job)
                else:
                    admitted.append(row)
            queue.extendleft(reversed(waiting_jobs))
        self._update_pos_base()
        return StepPlan(tuple(moves), self._prefills(admitted), tuple(empty))

    def _place(self, job: Job, free: list[int], frame: int | None, moves: list[CacheMove],
               now: float) -> SlotRow | None:
        """Admit `job` to a free slot (removed from `free`), with the cache moves that takes; None
        when every free slot is kept for another row's follow-up."""
        held = self.held
        own = held.slot_of(job.continues) if self.kv_continuation else None
        parked = own is not None and own >= self.num_slots
        kept = held.reusable(own, job.keys()) if own in free or parked else 0
        slot = own if kept and not parked else self._open_slot(free, own, frame)
        if slot is None:
            return None
        free.remove(slot)
        if slot != own:
            self._set_aside(slot, moves)
        if kept and parked:  # bring the parked cache back into the slot: its kept positions
            moves.append(CacheMove(own, slot, kept))
            held.move(own, slot)
            self.stats.unparked += 1
        held.take(slot)
        cap = min(job.max_frames, self.max_positions - job.prompt_len)
        row = SlotRow(job, slot, started_s=now, first_frame=self.stats.frames, prompt_len=job.prompt_len, cap=cap,
                      kept=kept)
        self._set_row(slot, row)
        self._live[job.key] = row
        return row

    def _set_aside(self, slot: int, moves: list[CacheMove]) -> None:
        """Park the cache in `slot` before a new row overwrites it, if a follow-up will want it and
        a parked row is free."""
        row = self.held.to_park(slot)
        if row is not None:
            moves.append(CacheMove(slot, row, int(self.held.entry(slot).keys.shape[0])))
            self.held.move(slot, row)
            self.stats.parked += 1

    def _open_slot(self, free: list[int], own: int | None, frame: int | None) -> int | None:
        """A free slot for a job that continues none: its own held slot if free, else one that no
        hold keeps (at scheduler frame `frame`; None: none does), those holding no cache first,
        then the caches left longest ago."""
        if own in free:
            return own
        held = self.held
        open_ = [s for s in free if frame is None or not held.reserved(s, frame)]

        def order(s: int) -> tuple[bool, int]:
            entry = held.entry(s)
            return entry is not None, entry.reserved_until if entry is not None else 0

        return min(open_, key=order, default=None)

    def _prefills(self, admitted: list[SlotRow]) -> tuple[PrefillBatch, ...]:
        """The admitted rows as prefill batches: full prefills, then continued rows' extensions."""
        out = []
        for extend in (False, True):
            rows = [r for r in admitted if bool(r.kept) == extend]
            for batch in self.prefill.batches(rows, lambda r: r.prompt_len - r.kept):
                shape = self.prefill.shape(len(batch), max(r.prompt_len - r.kept for r in batch))
                out.append(PrefillBatch(tuple(batch), shape, extend))
                self._count_prefill(batch, shape)
        return tuple(out)

    def _count_prefill(self, batch: list[SlotRow], shape: tuple[int, int]) -> None:
        s = self.stats
        s.prefills += 1
        s.prefill_rows += len(batch)
        s.prefill_tokens += sum(r.prompt_len - r.kept for r in batch)
        s.prefill_positions += shape[0] * shape[1]
        kept = [r.kept for r in batch if r.kept]
        s.continued_rows += len(kept)
        s.kept_positions += sum(kept)

    # ------------------------------------------------------------------ what the device did

    def frame_ran(self, kv_len: int) -> None:
        """A frame ran over every slot, attending over `kv_len` positions: count it, and where its
        idle slots were (a job waiting, a follow-up due, or neither: the tail)."""
        s = self.stats
        s.frames += 1
        s.attended_positions += kv_len
        s.slot_frames += self.num_slots
        s.busy_slot_frames += self._num_busy
        idle = self.num_slots - self._num_busy
        if not idle:
            return
        if self.waiting:
            s.idle_queued += idle
        elif self._awaited:
            s.idle_between_turns += idle
        else:
            s.idle_drain += idle

    def rows_ended(self, ends: Iterable[RowEnd]) -> list[SlotRow]:
        """Rows the device has stopped: their slots are free from now on; their frames go to the
        host (`row_done`). Flags of a slot's previous row, or of a freed slot, are ignored."""
        ended = []
        for end in ends:
            row = self.slots[end.slot].row
            if row is None or end.frame_index < row.first_frame:  # free, or stale: its previous row's flags
                continue
            row.reason, row.frames, row.fed = end.reason, end.frames, end.frames
            job = row.job
            if self.kv_continuation:
                row.fed = min(end.frames + (end.reason == "eos"), self.max_positions)
                until = self.stats.frames + self.hold_frames if job.followed else -1
                row.epoch = self.held.ended(end.slot, job.key, until, job.followed)
            if job.followed:
                self._awaited.add(job.key)
            self._set_row(end.slot, None)
            self.stats.useful_frames += end.frames
            ended.append(row)
        if ended:
            self._update_pos_base()
        return ended

    def row_done(self, row: SlotRow, keys=None) -> bool:
        """The row's frames are on the host; keys: the positions [P, 1 + K] its slot's cache holds
        now (KV continuation). False when it was cancelled meanwhile: deliver nothing."""
        if self._live.get(row.job.key) is row:
            del self._live[row.job.key]
        if row.cancelled:
            return False
        if keys is not None and row.epoch >= 0:
            self.held.record(row.slot, row.epoch, keys)
        return True

    def idle(self) -> None:
        """Nothing is queued or decoding: no follow-up is due any more until one is submitted."""
        self._awaited.clear()

    def abort(self) -> list[int]:
        """Drop every queued and admitted job; returns the slots that were decoding."""
        busy = [slot.index for slot in self.slots if slot.row is not None]
        self.queue.clear()
        self.speculative.clear()
        self.held.clear()
        for index in busy:
            self._set_row(index, None)
        self._live.clear()
        self._awaited.clear()
        self._update_pos_base()
        return busy

    def reset_parking(self, park_rows: int) -> None:
        """Room for `park_rows` parked caches, none held (all slots must be free)."""
        assert not self.busy
        self.park_rows = park_rows
        self.held = HeldCaches(self.num_slots, park_rows, slots=self.slots)
        self.held.clear()

    # ------------------------------------------------------------------ bookkeeping

    def _set_row(self, slot: int, row: SlotRow | None) -> None:
        """The slot's row from now on (None: free), with the counts the frame loop reads."""
        record = self.slots[slot]
        for r, sign in ((record.row, -1), (row, 1)):
            if r is not None:
                self._num_busy += sign
                self._num_sampled += sign * r.job.sampling.do_sample
        record.row = row

    def _update_pos_base(self) -> None:
        self._pos_base = max((slot.row.prompt_len - slot.row.first_frame for slot in self.slots
                              if slot.row is not None), default=-1)
