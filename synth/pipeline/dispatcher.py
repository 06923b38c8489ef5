"""Handing shards to a pool of actors: what to call next, and what each call's end changes.

This module owns the dispatcher's state: the queue of shards, each actor's state
(starting, waiting to be asked again, idle, preparing the voice library, running a
shard, or given up), the attempts of every shard and the shards that failed for good,
the one preparation of the voice library before any shard starts, and the progress
lines. A loop outside (`synth.pipeline.runner`) makes the calls `next_calls` returns on
real actors and reports how each ended: it returned, its actor died, or it raised. The
dispatcher knows nothing about Ray, processes or the model, so tests drive it with fake
actors and a fake clock.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

from synth.errors import SynthError
from synth.pipeline.output import ShardSummary
from synth.pipeline.plan import Shard

READY_RETRY_DELAY_S = 2.0
MAX_READY_FAILURES = 30  # consecutive failed `ready` calls (about a minute) before an actor is given up
MAX_WAIT_S = 30.0  # the longest wait for a call to end before `tick`
PROGRESS_EVERY_S = 60.0  # while nothing ends, a line this often says the run is alive

# The actor methods the dispatcher calls (`synth.pipeline.actor.SynthActor`).
READY = "ready"  # loads the model (its constructor) and says what it loaded
PREPARE_VOICES = "prepare_voices"
RUN_SHARD = "run_shard"


class RunError(SynthError, RuntimeError):
    """The run cannot start or must stop; the message says why."""


@dataclass(frozen=True)
class Call:
    """A call to make: `method` of actor number `actor`, with `shard` for RUN_SHARD and which
    attempt at it this is (1-based; a retried shard runs its scripts isolated)."""

    actor: int
    method: str
    shard: Shard | None = None
    attempt: int = 1


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s"
    )


class Progress:
    """The line printed as each shard is done: totals, speed since the start, and the ETA."""

    def __init__(self, total_shards: int, done_before: Iterable[ShardSummary], clock: Callable[[], float]):
        done_before = list(done_before)
        self.total_shards = total_shards
        self.shards_before = len(done_before)
        self.rows_before = self.rows = sum(d.rows for d in done_before)
        self.audio_before = self.audio_seconds = sum(d.audio_seconds for d in done_before)
        self.clock = clock
        self.started = clock()

    def x_real_time(self) -> float:
        """Audio seconds this run generated per second since it started."""
        return (self.audio_seconds - self.audio_before) / max(self.clock() - self.started, 1e-9)

    def shard_done(self, summary: ShardSummary, *, shards_done: int, shards_failed: int) -> str:
        """Count a shard done; `shards_done` includes it (and those done before this run)."""
        self.rows += summary.rows
        self.audio_seconds += summary.audio_seconds
        elapsed = self.clock() - self.started
        left = self.total_shards - shards_done - shards_failed
        per_shard = elapsed / max(1, shards_done - self.shards_before)
        return (
            f"[{shards_done}/{self.total_shards} shards] {self.rows} turns, {self.audio_seconds:.1f} s audio "
            f"({(self.audio_seconds - self.audio_before) / max(elapsed, 1e-9):.2f}x real time, "
            f"{(self.rows - self.rows_before) / max(elapsed, 1e-9):.2f} turns/s), ETA {fmt_duration(left * per_shard)}"
        )


class Dispatcher:
    """Shards to actors until every shard is done or failed; see the module docstring.

    Actors are numbered 0..num_actors-1; each starts with a `ready` call in flight. With
    `prepare_voices`, the first actor ready prepares the voice library before any shard
    starts (and if it dies doing so, the next actor ready does it), so no voice is encoded
    twice. A shard whose call fails is queued again until it has had `max_shard_attempts`.
    """

    def __init__(self, todo: Iterable[Shard], *, num_actors: int, max_shard_attempts: int, prepare_voices: bool,
                 done: dict[int, ShardSummary] | None = None, voices_uri: str = "", log=print,
                 clock: Callable[[], float] = time.time):
        self.queue = deque(todo)
        self.max_shard_attempts = max_shard_attempts
        self.attempts: dict[int, int] = {}  # shard -> calls made to run it
        self.done: dict[int, ShardSummary] = dict(done or {})  # with those done before this run
        self.failed: dict[int, str] = {}  # shard -> why its last attempt failed
        self.voices: dict = {}  # what preparing the voice library did, for run.json
        self.voices_ready = not prepare_voices
        self.voices_uri = voices_uri  # for messages
        self.log = log
        self.clock = clock
        # An actor is in exactly one of these, or in none once given up.
        self.starting: set[int] = set()  # a `ready` call in flight
        self.ask_at: dict[int, float] = {}  # its `ready` call failed while Ray restarts it: when to ask again
        self.idle: list[int] = []  # the last to become idle is the first to get work
        self.preparing: int | None = None  # preparing the voice library
        self.running: dict[int, Shard] = {}
        self.ready_failures: dict[int, int] = {}  # actor -> consecutive failed `ready` calls
        self._calls: list[Call] = []
        for actor in range(num_actors):
            self._ask_ready(actor)
        self.progress = Progress(len(self.queue) + len(self.done), self.done.values(), clock)
        self.last_report = clock()

    @property
    def finished(self) -> bool:
        return not self.queue and not self.running

    def _ask_ready(self, actor: int) -> None:
        self.starting.add(actor)
        self._calls.append(Call(actor, READY))

    # -- what to do next ------------------------------------------------------------------

    def next_calls(self) -> list[Call]:
        """The calls to make now: `ready` again for actors whose wait is over, the voice
        library's preparation, and a shard for every idle actor. Raises RunError when no
        call is in flight and none is due: no actor could be started."""
        now = self.clock()
        for actor, when in list(self.ask_at.items()):
            if when <= now:
                del self.ask_at[actor]
                self._ask_ready(actor)
        if not self.voices_ready and self.preparing is None and self.idle:
            self.preparing = self.idle.pop()
            self._calls.append(Call(self.preparing, PREPARE_VOICES))
        while self.idle and self.queue and self.voices_ready:
            actor, shard = self.idle.pop(), self.queue.popleft()
            self.attempts[shard.index] = self.attempts.get(shard.index, 0) + 1
            self.running[actor] = shard
            self._calls.append(Call(actor, RUN_SHARD, shard, self.attempts[shard.index]))
        if not (self.running or self.starting or self.preparing is not None or self.ask_at):
            raise RunError("no actor could be started")
        calls, self._calls = self._calls, []
        return calls

    def wait_timeout(self) -> float:
        """How long to wait for a call to end: until the next actor is due to be asked again."""
        now = self.clock()
        return min([MAX_WAIT_S] + [max(0.0, when - now) for when in self.ask_at.values()])

    # -- how a call ended: the loop outside reports one of these three ----------------------

    def returned(self, call: Call, value) -> None:
        if call.method == READY:
            self.actor_ready(call.actor, value)
        elif call.method == PREPARE_VOICES:
            self.voices_prepared(call.actor, value)
        else:
            self.shard_done(call.actor, value)

    def died(self, call: Call, error: str, *, init_failed: bool = False) -> None:
        """The call's actor died (Ray restarts it) or, with `init_failed`, never loaded."""
        if call.method == READY and init_failed:
            self.actor_failed_to_load(call.actor, error)
        elif call.method == READY:
            self.actor_not_ready(call.actor, error)
        elif call.method == PREPARE_VOICES:
            self.voice_preparer_died(call.actor)
        else:
            self.shard_failed(call.actor, error, actor_died=True)

    def raised(self, call: Call, error: str) -> None:
        """The call raised; its actor lives on."""
        if call.method == READY:
            self.actor_failed_to_load(call.actor, error)
        elif call.method == PREPARE_VOICES:
            self.voice_preparation_failed(call.actor, error)
        else:
            self.shard_failed(call.actor, error, actor_died=False)

    # -- the events -------------------------------------------------------------------------

    def actor_ready(self, actor: int, info: dict) -> None:
        """The actor loaded its model; `info` is what its `ready` said (pid, engine, device...)."""
        self.starting.discard(actor)
        self.ready_failures.pop(actor, None)
        self.log(f"actor ready: pid {info.get('pid')}, {info.get('engine')} engine on {info.get('device')}")
        self.idle.append(actor)

    def actor_not_ready(self, actor: int, error: str) -> None:
        """Its `ready` call failed: it died or lost its node while loading, or is restarting
        (a call made just after a crash can fail before Ray queues calls for the restarted
        process). Ray restarts it, so ask again shortly; give up on it only if it keeps failing."""
        self.starting.discard(actor)
        failures = self.ready_failures[actor] = self.ready_failures.get(actor, 0) + 1
        if failures > MAX_READY_FAILURES:
            self.log(f"an actor failed {failures} times to come back; going on without it: {error}")
        else:
            self.ask_at[actor] = self.clock() + READY_RETRY_DELAY_S

    def actor_failed_to_load(self, actor: int, error: str) -> None:
        """Its constructor or `ready` raised: the model cannot be loaded, on any actor."""
        raise RunError(f"an actor failed to load the model: {error}")

    def voices_prepared(self, actor: int, voices: dict) -> None:
        """The voice library is ready (`voices` says what was encoded and what is broken): shards may start."""
        self.preparing = None
        self.voices.update(voices)
        self.voices_ready = True
        broken = [v["error"] for v in voices["voices"].values() if "error" in v]
        self.log(f"voices: {len(voices['voices'])} ready ({voices['encoded']} encoded now, the rest from "
                 f"{self.voices_uri})" + "".join(f"; {msg}" for msg in broken))
        self.idle.append(actor)

    def voice_preparer_died(self, actor: int) -> None:
        """It died while encoding: ask it to come back; the next actor ready prepares the voices."""
        self.preparing = None
        self._ask_ready(actor)

    def stopped(self, call: Call, error: str) -> None:
        """A call failed for a reason that is not its shard's (the output cannot be written, the
        run lost its lease): retrying cannot help, so the run stops; a relaunch resumes."""
        raise RunError(f"the run stopped: {error}")

    def voice_preparation_failed(self, actor: int, error: str) -> None:
        raise RunError(f"preparing the voice library failed: {error}")

    def shard_done(self, actor: int, summary: ShardSummary) -> None:
        shard = self.running.pop(actor)
        self.idle.append(actor)
        self.done[shard.index] = summary
        self.log(self.progress.shard_done(summary, shards_done=len(self.done), shards_failed=len(self.failed)))

    def shard_failed(self, actor: int, error: str, *, actor_died: bool) -> None:
        """The shard's call failed: queue it again, or record it failed once it has had its
        attempts. An actor that died is asked `ready` again (Ray restarts it); one whose call
        raised goes back to work."""
        shard = self.running.pop(actor)
        reason = error.strip().splitlines()[-1][:500]
        attempts = self.attempts[shard.index]
        if attempts >= self.max_shard_attempts:
            self.failed[shard.index] = reason
            self.log(f"shard {shard.index} FAILED after {attempts} attempts: {reason}")
        else:
            self.log(f"shard {shard.index} attempt {attempts} failed ({reason}); retrying")
            self.queue.append(shard)
        if actor_died:
            self._ask_ready(actor)
        else:
            self.idle.append(actor)

    def tick(self) -> None:
        """No call ended within the wait: now and then, a line saying what is still going on."""
        if self.clock() - self.last_report > PROGRESS_EVERY_S:
            self.log(f"  ... {len(self.running)} shards in flight, {len(self.starting)} actors still starting")
            self.last_report = self.clock()
