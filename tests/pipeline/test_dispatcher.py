"""The dispatcher without Ray: fake actors that load, die, restart and raise as scripted,
and a fake clock. Each test checks what ended done or failed, attempts, which actor got
what, and the lines a user reads."""

from collections import deque

import pytest

from synth.pipeline.dispatcher import (
    MAX_READY_FAILURES,
    MAX_WAIT_S,
    PREPARE_VOICES,
    READY,
    READY_RETRY_DELAY_S,
    RUN_SHARD,
    Dispatcher,
    RunError,
    fmt_duration,
)
from synth.pipeline.output import ShardSummary
from synth.pipeline.plan import Shard

VOICES = {"voices": {"narrator": {"speaker": 0, "seconds": 1.5},
                     "broken": {"error": "voice 'broken': cannot use its reference clip: not a WAV"}},
          "encoded": 1}


def shards(*indices):
    return [Shard(i, 0, 2 * i, 2 * i + 2) for i in indices]


def summary(index):
    return ShardSummary(shard=index, rows=2, errors=0, error_scripts=0, scripts=2, audio_seconds=3.0)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeActors:
    """Actors that answer calls in the order they were made, each call taking a second.

    `outcomes` scripts successive calls: keyed by (actor, method), or by shard index for
    whichever actor runs that shard; each entry "ok", "died" (the process died: Ray
    restarts it with a new pid), "init_failed" (its constructor raised) or "raised" (the
    call raised). Calls past a script return normally."""

    def __init__(self, num_actors, outcomes=None):
        self.num_actors = num_actors
        self.outcomes = {k: deque(v) for k, v in (outcomes or {}).items()}
        self.clock = FakeClock()
        self.pids = {actor: 100 + actor for actor in range(num_actors)}
        self.ended = []  # (actor, method, shard index or None, outcome), in the order calls ended
        self.lines = []

    def dispatcher(self, todo, **kwargs):
        kwargs = {"max_shard_attempts": 3, "prepare_voices": False, "voices_uri": "OUT/_voices", **kwargs}
        return Dispatcher(todo, num_actors=self.num_actors, log=self.lines.append, clock=self.clock, **kwargs)

    def _outcome(self, call):
        key = call.shard.index if call.method == RUN_SHARD else (call.actor, call.method)
        script = self.outcomes.get(key)
        return script.popleft() if script else "ok"

    def run(self, dispatcher, max_steps=10_000):
        in_flight = deque()
        for _ in range(max_steps):  # a dispatcher that stalls fails the test instead of hanging it
            if dispatcher.finished:
                return dispatcher
            in_flight.extend(dispatcher.next_calls())
            if not in_flight:  # every actor waits to be asked again
                self.clock.now += dispatcher.wait_timeout()
                dispatcher.tick()
                continue
            call = in_flight.popleft()
            self.clock.now += 1.0
            outcome = self._outcome(call)
            self.ended.append((call.actor, call.method, call.shard.index if call.shard else None, outcome))
            if outcome == "died":
                self.pids[call.actor] += 10
                dispatcher.died(call, f"ray.exceptions.ActorDiedError: ...\nThe actor died unexpectedly in {call.method}")
            elif outcome == "init_failed":
                dispatcher.died(call, "ActorDiedError: __init__ raised: no such checkpoint", init_failed=True)
            elif outcome == "raised":
                dispatcher.raised(call, f"RayTaskError(ValueError)\nTraceback (most recent call last):\n"
                                        f"ValueError: {call.method} broke on actor {call.actor}")
            elif call.method == READY:
                dispatcher.returned(call, {"pid": self.pids[call.actor], "engine": "fake", "device": "cpu"})
            elif call.method == PREPARE_VOICES:
                dispatcher.returned(call, VOICES)
            else:
                dispatcher.returned(call, summary(call.shard.index))
        raise AssertionError(f"not finished after {max_steps} steps: queue {list(dispatcher.queue)}, "
                             f"running {dispatcher.running}, idle {dispatcher.idle}")

    def calls(self, method, outcome=None):
        return [e for e in self.ended if e[1] == method and (outcome is None or e[3] == outcome)]


def ready_pids(lines):
    return [line.split("pid ")[1].split(",")[0] for line in lines if line.startswith("actor ready: ")]


def test_every_shard_is_done_exactly_once_across_the_actors():
    actors = FakeActors(3)
    d = actors.run(actors.dispatcher(shards(*range(10))))
    assert sorted(d.done) == list(range(10)) and d.failed == {}
    assert d.attempts == {i: 1 for i in range(10)}
    runs = [e[2] for e in actors.calls(RUN_SHARD)]
    assert sorted(runs) == list(range(10))  # each shard run once
    assert {e[0] for e in actors.calls(RUN_SHARD)} == {0, 1, 2}  # every actor worked
    assert ready_pids(actors.lines) == ["100", "101", "102"]
    progress = [line for line in actors.lines if line.startswith("[")]
    assert [p.split(" shards]")[0] for p in progress] == [f"[{n}/10" for n in range(1, 11)]
    assert progress[-1].startswith("[10/10 shards] 20 turns, 30.0 s audio") and progress[-1].endswith("ETA 0m00s")
    assert not actors.calls(PREPARE_VOICES)


def test_progress_counts_shards_done_before_this_run_but_rates_only_this_run():
    actors = FakeActors(1)
    d = actors.run(actors.dispatcher(shards(2, 3, 4), done={0: summary(0), 1: summary(1)}))
    assert sorted(d.done) == [0, 1, 2, 3, 4]
    progress = [line for line in actors.lines if line.startswith("[")]
    # ready ends at +1 s, shard 2 at +2 s: 3 s of audio and 2 turns in 2 s, 2 shards left at 2 s each
    assert progress[0] == "[3/5 shards] 6 turns, 9.0 s audio (1.50x real time, 1.00 turns/s), ETA 0m04s"
    assert progress[-1].startswith("[5/5 shards] 10 turns, 15.0 s audio")


def test_an_actor_that_dies_while_loading_is_asked_again_until_it_is_back():
    actors = FakeActors(1, {(0, READY): ["died", "died"]})
    start = actors.clock.now
    d = actors.run(actors.dispatcher(shards(0, 1)))
    assert sorted(d.done) == [0, 1] and d.attempts == {0: 1, 1: 1}
    assert [e[3] for e in actors.calls(READY)] == ["died", "died", "ok"]
    assert actors.clock.now - start >= 2 * READY_RETRY_DELAY_S  # it waited before asking again
    assert ready_pids(actors.lines) == ["120"]  # the process that finally came up
    assert d.ready_failures == {}  # the count starts over once it is back


def test_an_actor_that_never_comes_back_is_given_up_and_the_others_finish():
    actors = FakeActors(2, {(0, READY): ["died"] * (MAX_READY_FAILURES + 1)})
    d = actors.run(actors.dispatcher(shards(*range(150))))  # long enough to outlast the retries
    assert sorted(d.done) == list(range(150))
    assert {e[0] for e in actors.calls(RUN_SHARD)} == {1}
    assert [e[0] for e in actors.calls(READY, "died")] == [0] * (MAX_READY_FAILURES + 1)
    assert len(actors.calls(READY)) == MAX_READY_FAILURES + 2  # then actor 0 was never asked again
    assert any(line.startswith(f"an actor failed {MAX_READY_FAILURES + 1} times to come back; going on without it: ")
               for line in actors.lines), actors.lines


def test_the_run_stops_when_no_actor_can_be_started():
    actors = FakeActors(2, {(a, READY): ["died"] * (MAX_READY_FAILURES + 1) for a in range(2)})
    with pytest.raises(RunError, match="no actor could be started"):
        actors.run(actors.dispatcher(shards(0)))
    assert not actors.calls(RUN_SHARD)


@pytest.mark.parametrize("outcome", ["init_failed", "raised"])
def test_an_actor_that_cannot_load_the_model_stops_the_run(outcome):
    actors = FakeActors(2, {(1, READY): [outcome]})
    with pytest.raises(RunError, match="an actor failed to load the model: .*"):
        actors.run(actors.dispatcher(shards(*range(5))))


def test_voices_are_prepared_once_by_the_first_actor_ready_before_any_shard():
    actors = FakeActors(2)
    d = actors.run(actors.dispatcher(shards(*range(4)), prepare_voices=True))
    assert sorted(d.done) == [0, 1, 2, 3]
    (prepared,) = actors.calls(PREPARE_VOICES)
    assert prepared[0] == 0  # the first actor ready
    assert actors.ended.index(prepared) < actors.ended.index(actors.calls(RUN_SHARD)[0])
    assert d.voices == VOICES
    assert ("voices: 2 ready (1 encoded now, the rest from OUT/_voices); voice 'broken': cannot use its "
            "reference clip: not a WAV") in actors.lines


def test_an_actor_dying_while_preparing_voices_leaves_them_to_the_next_actor_ready():
    actors = FakeActors(2, {(0, PREPARE_VOICES): ["died"]})
    d = actors.run(actors.dispatcher(shards(*range(4)), prepare_voices=True))
    assert [(e[0], e[3]) for e in actors.calls(PREPARE_VOICES)] == [(0, "died"), (1, "ok")]
    prepared = actors.ended.index(actors.calls(PREPARE_VOICES, "ok")[0])
    assert all(actors.ended.index(run) > prepared for run in actors.calls(RUN_SHARD))  # no shard before the voices
    assert ready_pids(actors.lines) == ["100", "101", "110"]  # actor 0 came back, and worked
    assert sorted(d.done) == [0, 1, 2, 3] and {e[0] for e in actors.calls(RUN_SHARD)} == {0, 1}


def test_voice_preparation_that_raises_stops_the_run():
    actors = FakeActors(1, {(0, PREPARE_VOICES): ["raised"]})
    with pytest.raises(RunError, match="(?s)preparing the voice library failed: .*prepare_voices broke on actor 0"):
        actors.run(actors.dispatcher(shards(0), prepare_voices=True))
    assert not actors.calls(RUN_SHARD)


def test_an_actor_dying_mid_shard_comes_back_and_the_shard_is_retried():
    actors = FakeActors(1, {1: ["died"]})
    d = actors.run(actors.dispatcher(shards(0, 1, 2)))
    assert sorted(d.done) == [0, 1, 2] and d.failed == {}
    assert d.attempts == {0: 1, 1: 2, 2: 1}
    assert [e[2] for e in actors.calls(RUN_SHARD, "ok")] == [0, 2, 1]  # queued again behind the others
    assert "shard 1 attempt 1 failed (The actor died unexpectedly in run_shard); retrying" in actors.lines
    assert ready_pids(actors.lines) == ["100", "110"]  # a new process took over


def test_an_actor_restarting_after_dying_mid_shard_is_asked_again_until_it_is_back():
    actors = FakeActors(1, {0: ["died"], (0, READY): ["ok", "died", "died"]})
    d = actors.run(actors.dispatcher(shards(0, 1)))
    assert sorted(d.done) == [0, 1] and d.attempts == {0: 2, 1: 1}
    assert [e[3] for e in actors.calls(READY)] == ["ok", "died", "died", "ok"]
    assert ready_pids(actors.lines) == ["100", "130"]


def test_a_task_error_retries_on_the_same_actor_without_waiting_for_it():
    actors = FakeActors(1, {1: ["raised"]})
    d = actors.run(actors.dispatcher(shards(0, 1)))
    assert sorted(d.done) == [0, 1] and d.attempts == {0: 1, 1: 2}
    assert len(actors.calls(READY)) == 1  # the actor lives on: no `ready` again
    assert "shard 1 attempt 1 failed (ValueError: run_shard broke on actor 0); retrying" in actors.lines


def test_a_shard_that_keeps_failing_is_recorded_after_its_attempts_and_the_rest_completes():
    actors = FakeActors(2, {2: ["died", "raised", "raised", "raised"]})
    d = actors.run(actors.dispatcher(shards(*range(5)), max_shard_attempts=3))
    assert d.failed == {2: "ValueError: run_shard broke on actor 0"}  # the last attempt's reason
    assert sorted(d.done) == [0, 1, 3, 4]
    assert d.attempts[2] == 3 and len(actors.calls(RUN_SHARD)) == 4 + 3
    failures = [line for line in actors.lines if line.startswith("shard 2 ")]
    assert [line.split(" (")[0].split(":")[0] for line in failures] == [
        "shard 2 attempt 1 failed", "shard 2 attempt 2 failed", "shard 2 FAILED after 3 attempts"]
    assert d.finished


def test_a_failure_reason_is_the_last_line_of_the_error_cut_to_500_characters():
    actors = FakeActors(1)
    d = actors.dispatcher(shards(0), max_shard_attempts=1)
    (ready,) = d.next_calls()
    d.returned(ready, {"pid": 1, "engine": "fake", "device": "cpu"})
    (run,) = d.next_calls()
    d.raised(run, "Traceback\n  File x\nOSError: " + "x" * 600 + "\n\n")
    assert d.failed == {0: ("OSError: " + "x" * 600)[:500]} and d.finished


def test_while_nothing_ends_a_line_now_and_then_says_what_is_going_on():
    actors = FakeActors(2, {(1, READY): ["died"]})
    d = actors.dispatcher(shards(0, 1))
    assert d.wait_timeout() == MAX_WAIT_S
    first, second = d.next_calls()
    d.returned(first, {"pid": 100, "engine": "fake", "device": "cpu"})
    d.died(second, "restarting")
    assert d.wait_timeout() == READY_RETRY_DELAY_S  # wake up when actor 1 is due to be asked again
    assert [c.method for c in d.next_calls()] == [RUN_SHARD]
    actors.clock.now += READY_RETRY_DELAY_S
    assert [(c.actor, c.method) for c in d.next_calls()] == [(1, READY)]
    d.tick()
    actors.clock.now += 61
    d.tick()
    actors.clock.now += 30
    d.tick()  # not again so soon
    assert [line for line in actors.lines if line.startswith("  ...")] == [
        "  ... 1 shards in flight, 1 actors still starting"]


def test_durations_read_as_minutes_or_hours():
    assert fmt_duration(59.9) == "0m59s"
    assert fmt_duration(600) == "10m00s"
    assert fmt_duration(3661) == "1h01m01s"
