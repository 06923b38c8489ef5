"""What a decoding slot's KV cache still holds once its row has ended, and who may continue it.

This module owns the record of each cache row's held positions (`HeldCaches`): after a row
ends, its slot's backbone cache still holds the row's prompt and the frames it fed back,
and a later prompt that starts with exactly those positions (a chain's next turn, whose
context is the previous context plus the previous turn) can keep them and prefill only
what is new. Positions are compared as keys (`position_keys`: the text id, or the audio
frame), never trusted from the caller: the continuation hint (`Job.continues`) only says
which slot to look at, and the common prefix actually checked decides how much is kept.
When a new row needs a slot whose cache a follow-up will want, the cache can be set aside
in a parked row (`LeanCsm.park`) and brought back into any free slot when the follow-up
comes: indices num_slots.. here are those parked rows. It also owns the reservation that
can keep a slot for its follow-up for a few frames while the follow-up is prepared.

Each cache row, a slot's or a parked one's, is one `CacheRow` record (what it holds, and its
epoch); a slot's record is the policy's `Slot`, which adds the row decoding in it
(`synth.engine.policy`), so one object holds all the host knows of a slot. It imports no torch
(the scheduling policy is tested without it): keys are arrays, torch tensors or numpy, built
with the methods of whatever array they are given. It knows nothing about text, requests,
models or audio.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


def _minus_ones(like, shape: tuple[int, int]):
    """An int64 array of -1 of `shape`, of the kind of `like` (a torch tensor, else numpy)."""
    if hasattr(like, "new_full"):  # torch, without importing it here
        return like.long().new_full(shape, -1)
    return np.full(shape, -1, dtype=np.int64)


def _int64(x):
    """x as int64 (torch's indexed assignment wants the destination's dtype; numpy casts)."""
    return x.long() if hasattr(x, "long") else x


def position_keys(input_ids, audio_frames, is_audio):
    """One comparable key per backbone position: [T, 1 + K] int64, of the arrays' kind. A text
    position is (id, -1...), an audio position (-1, its frame): two positions embed alike iff
    their keys are equal."""
    K = audio_frames.shape[1]
    keys = _minus_ones(input_ids, (int(input_ids.shape[0]), 1 + K))
    keys[~is_audio, 0] = _int64(input_ids[~is_audio])
    keys[is_audio, 1:] = _int64(audio_frames)
    return keys


def frame_keys(frames):
    """frames: [F, K] fed back to the backbone -> their keys [F, 1 + K], of the frames' kind."""
    keys = _minus_ones(frames, (int(frames.shape[0]), 1 + frames.shape[1]))
    keys[:, 1:] = _int64(frames)
    return keys


def common_prefix(a, b) -> int:
    """Leading positions where keys a [Ta, 1 + K] and b [Tb, 1 + K] agree (arrays of any kind on the host)."""
    a, b = np.asarray(a), np.asarray(b)
    n = min(a.shape[0], b.shape[0])
    same = (a[:n] == b[:n]).all(axis=1)
    return n if bool(same.all()) else int(np.argmin(same))


@dataclass
class Held:
    """A free cache row's contents: `keys` [P, 1 + K] of the positions 0..P-1 it holds (None while
    its row's frames are still on their way to the host); only the job continuing `key` may take
    the slot before scheduler frame `reserved_until`."""

    key: Any
    keys: Any
    reserved_until: int
    followed: bool = False  # a follow-up will want it: worth parking


@dataclass
class CacheRow:
    """One backbone cache row as the host knows it (a slot's, or a parked row's)."""

    held: Held | None = None  # what it holds for a follow-up, if anything
    epoch: int = 0  # rows written into it so far: a late record of an older row is dropped


class HeldCaches:
    """The held cache of every cache row, by index and by the key of the row that left it.

    Every lookup the scheduler makes per admission or per frame is kept off a scan of all the
    entries: rows by key (`slot_of`), the free parked rows lowest first (`to_park`), and the
    entries under a hold (`any_reserved`) each have an index of their own."""

    def __init__(self, num_slots: int, park_rows: int = 0, *, slots: Sequence[CacheRow] | None = None):
        """slots: the slots' records (the policy's `Slot`s), else plain `CacheRow`s."""
        self.num_slots = num_slots
        slots = list(slots) if slots is not None else [CacheRow() for _ in range(num_slots)]
        assert len(slots) == num_slots
        self.places: list[CacheRow] = slots + [CacheRow() for _ in range(park_rows)]  # slots, then parked rows
        self._by_key: dict[Any, int] = {}  # key -> the index whose entry it is (the latest, if a key recurs)
        self._free_parked = list(range(num_slots, num_slots + park_rows))  # a heap: the lowest (allocated) first
        self._holds: dict[int, int] = {}  # index -> reserved_until, for entries that may still be under a hold

    @property
    def held(self) -> list[Held | None]:
        """Every cache row's entry, slots then parked rows (a copy: for tests and reports)."""
        return [place.held for place in self.places]

    def entry(self, index: int) -> Held | None:
        return self.places[index].held

    def _drop(self, index: int) -> None:
        """Forget the entry at `index` in the indexes (not in its record)."""
        held = self.places[index].held
        if held is not None and self._by_key.get(held.key) == index:
            del self._by_key[held.key]
        self._holds.pop(index, None)

    def take(self, slot: int) -> None:
        """A new row starts in `slot`: what it held is being overwritten."""
        self._drop(slot)
        place = self.places[slot]
        place.held = None
        place.epoch += 1

    def clear(self) -> None:
        for place in self.places:
            place.held = None
            place.epoch += 1
        self._by_key.clear()
        self._holds.clear()
        self._free_parked = list(range(self.num_slots, len(self.places)))

    def ended(self, slot: int, key: Any, reserved_until: int, followed: bool) -> int:
        """The row `key` ended in `slot`; its keys follow (`record`). Returns the slot's epoch."""
        self._drop(slot)
        place = self.places[slot]
        place.held = Held(key, None, reserved_until, followed)
        self._by_key[key] = slot
        if reserved_until >= 0:
            self._holds[slot] = reserved_until
        return place.epoch

    def forget(self, slot: int, epoch: int) -> None:
        """Hold nothing for the row that ended in `slot` at `epoch` (a cancelled row), unless a
        newer row has taken the slot since."""
        if self.places[slot].epoch == epoch:
            self._drop(slot)
            self.places[slot].held = None

    def to_park(self, slot: int) -> int | None:
        """A free parked row for the cache in `slot` if a follow-up will want it (else None), the
        lowest free one (rows are allocated on first use: those in use already come first); the
        caller moves the cache there (`move`). A full park keeps what it holds: its caches were
        set aside first, so their follow-ups come first."""
        held = self.places[slot].held
        if held is None or held.keys is None or not held.followed or not self._free_parked:
            return None
        return heapq.heappop(self._free_parked)

    def move(self, src: int, dst: int) -> None:
        """The cache recorded at `src` now lies at `dst` (parked, or back in a slot)."""
        held = self.places[src].held
        self._drop(src)
        self._drop(dst)
        self.places[dst].held, self.places[src].held = held, None
        self.places[dst].epoch += 1
        if held is not None:
            self._by_key[held.key] = dst
            if held.reserved_until >= 0:
                self._holds[dst] = held.reserved_until
        if src >= self.num_slots:
            heapq.heappush(self._free_parked, src)

    def record(self, slot: int, epoch: int, keys) -> None:
        """The positions [P, 1 + K] the slot holds, unless a newer row has taken it since."""
        place = self.places[slot]
        if place.held is not None and place.epoch == epoch:
            place.held.keys = keys

    def slot_of(self, key: Any) -> int | None:
        """The slot (or parked row) holding what row `key` left, if any."""
        index = self._by_key.get(key) if key is not None else None
        if index is None:
            return None
        held = self.places[index].held
        return None if held is None or held.keys is None else index

    def reusable(self, slot: int, keys) -> int:
        """Positions of a prompt with `keys` [T, 1 + K] that the slot's cache already holds; at most
        T - 1, since the prompt's last position must be computed for its hidden state."""
        held = self.places[slot].held
        if held is None or held.keys is None:
            return 0
        return min(common_prefix(held.keys, keys), int(keys.shape[0]) - 1)

    def reserved(self, slot: int, frame: int) -> bool:
        """Whether the slot waits for its row's follow-up at scheduler frame `frame`."""
        held = self.places[slot].held
        return held is not None and frame < held.reserved_until

    def any_reserved(self, frame: int) -> bool:
        """Whether any entry waits for its follow-up at scheduler frame `frame` (frames only grow):
        looks only at entries whose hold has not lapsed, and forgets those whose has."""
        for index, until in list(self._holds.items()):
            if frame < until:
                return True
            del self._holds[index]
        return False
