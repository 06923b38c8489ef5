"""Cancelling requests and handing work to a running engine from other threads (tiny model, CPU).

What a QC stage needs of the engine (issue 22): a speculative continuation whose parent take
failed is cancelled wherever it is, delivers nothing and frees its slot for the next row, its
generated frames counted as discarded; requests submitted from another thread while `run` goes
(verdicts arriving later) are generated exactly as the same requests submitted up front
(float64, greedy), and `run` waits for them while submissions are open.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from synth.engine.fast_engine import FastEngine
from synth.engine.interface import GenerationRequest, SamplingParams, Segment
from synth.engine.options import FastEngineOptions

GREEDY = SamplingParams(do_sample=False)
LONG = GenerationRequest("long", "It was the best of times, it was the worst of times.", 0, 60)
NEXT = GenerationRequest("next", "Hello there.", 1, 6)
LATER = [GenerationRequest("later-a", "Call me Ishmael.", 0, 5, seed=1),
         GenerationRequest("later-b", "Pack my box with five dozen jugs.", 1, 7, seed=2,
                           context=(Segment(0, "Hi there.", None),))]


def _engine(path, num_slots: int, **options) -> FastEngine:
    return FastEngine.load(path, device="cpu", dtype="float64", num_slots=num_slots, max_positions=128,
                           compile=False, warmup=False, options=FastEngineOptions(**options))


def _cancel_at(engine: FastEngine, frame: int, request_id: str) -> dict[str, int]:
    """Call `engine.cancel(request_id)` once `frame` frames have run, from inside the frame loop,
    as another thread's call would land between two frames; the frames it reports, by request id."""
    run_frame = engine.scheduler.run_frame
    reported: dict[str, int] = {}

    def frame_then_cancel(sample, kv_len=None):
        run_frame(sample, kv_len)
        if engine.scheduler.stats.frames + 1 == frame:
            engine.cancel(request_id, lambda frames: reported.__setitem__(request_id, frames))

    engine.scheduler.run_frame = frame_then_cancel
    return reported


@pytest.fixture(scope="module")
def alone(tiny_checkpoint):
    """Each request generated alone: the codes any order must give."""
    engine = _engine(tiny_checkpoint, 1)
    return {r.request_id: r.codes for r in engine.generate([NEXT, *LATER], GREEDY)}


def test_a_cancelled_decoding_row_delivers_nothing_and_its_slot_takes_the_next(tiny_checkpoint, alone):
    engine = _engine(tiny_checkpoint, 1)
    reported = _cancel_at(engine, 10, "long")
    seen = []
    results = engine.run([LONG, NEXT], GREEDY, on_result=lambda r: seen.append(r.request_id))
    assert [r.request_id for r in results] == seen == ["next"]
    np.testing.assert_array_equal(results[0].codes, alone["next"])
    stats = engine.scheduler.stats
    assert (stats.cancelled_rows, stats.discarded_frames) == (1, 10)
    assert reported == {"long": 10}  # the caller hears what was thrown away (a QC run's run.json counts it)
    # the slot went to "next" at once: 10 frames of "long", then its own
    assert stats.frames == 10 + NEXT.max_frames and stats.useful_frames == NEXT.max_frames


def test_cancels_of_queued_and_finished_but_undelivered_rows(tiny_checkpoint, alone):
    """A queued request and a finished one still waiting to be decoded (rows are decoded in
    batches) are dropped too; a cancel of a request already delivered, or unknown, changes nothing."""
    engine = _engine(tiny_checkpoint, 2, decode_interval_frames=50)
    reported = _cancel_at(engine, 8, "next")  # "next" ended after 6 frames; it waits for a batch
    # handed over before the call: taken before the call's own requests, it finds none
    engine.cancel("later-a", lambda frames: reported.__setitem__("later-a", frames))
    results = engine.run([LONG, NEXT, LATER[0]], GREEDY)
    assert {r.request_id for r in results} == {"long", "later-a"}
    stats = engine.scheduler.stats
    assert (stats.cancelled_rows, stats.discarded_frames) == (1, NEXT.max_frames)
    assert stats.useful_frames == sum(len(r.codes) for r in results)
    assert reported == {"next": NEXT.max_frames, "later-a": 0}
    engine.cancel("long", lambda frames: reported.__setitem__("long", frames))  # delivered already: nothing happens
    [again] = engine.generate([NEXT], GREEDY)
    np.testing.assert_array_equal(again.codes, alone["next"])
    assert reported["long"] == 0  # applied at the next call's start, before its work

    queued = _engine(tiny_checkpoint, 1)
    reported = _cancel_at(queued, 2, "later-b")
    results = queued.run([LONG, *LATER], GREEDY, on_result=lambda r: None)
    assert {r.request_id for r in results} == {"long", "later-a"}
    assert (queued.scheduler.stats.cancelled_rows, queued.scheduler.stats.discarded_frames) == (1, 0)
    assert reported == {"later-b": 0}


@pytest.mark.parametrize("result_thread", [False, True])
def test_requests_submitted_from_another_thread_equal_the_same_requests_up_front(tiny_checkpoint, alone,
                                                                                   result_thread):
    """A thread hands over two requests once the first result is out, after a pause longer than
    the rest of the run: `run` waits for them while submissions are open, and returns once they
    are done and closed; their codes are those of the same requests generated up front."""
    engine = _engine(tiny_checkpoint, 2, result_thread=result_thread)
    first_result = threading.Event()

    def verdicts():
        first_result.wait(timeout=60)
        time.sleep(0.5)
        engine.submit(LATER)
        engine.close_submissions()

    thread = threading.Thread(target=verdicts)
    engine.open_submissions()
    thread.start()
    results = engine.run([NEXT], GREEDY, on_result=lambda r: first_result.set())
    thread.join(timeout=60)
    assert sorted(r.request_id for r in results) == ["later-a", "later-b", "next"]
    for r in results:
        np.testing.assert_array_equal(r.codes, alone[r.request_id], err_msg=r.request_id)
    # nothing left open: the next run ends as soon as its own work is done
    assert [r.request_id for r in engine.generate([NEXT], GREEDY)] == ["next"]


def test_open_submissions_nest_and_follow_ups_from_on_result_still_join(tiny_checkpoint, alone):
    """One open per pending verdict: the run ends only after the last close, and `on_result`'s
    own follow-ups keep working beside the external ones."""
    engine = _engine(tiny_checkpoint, 2)
    pending = []

    def on_result(result):
        if result.request_id == "next":  # two verdicts pending, answered later from threads
            for request in LATER:
                engine.open_submissions()
                pending.append(threading.Timer(0.3 * (len(pending) + 1), _answer, (engine, request)))
                pending[-1].start()
            return [GenerationRequest("follow", "Yes, she said.", 0, 4)]
        return None

    results = engine.run([NEXT], GREEDY, on_result=on_result)
    for timer in pending:
        timer.join()
    assert sorted(r.request_id for r in results) == ["follow", "later-a", "later-b", "next"]
    for r in results:
        if r.request_id in alone:
            np.testing.assert_array_equal(r.codes, alone[r.request_id], err_msg=r.request_id)


def _answer(engine: FastEngine, request: GenerationRequest) -> None:
    engine.submit([request])
    engine.close_submissions()


def test_the_reference_engine_takes_submissions_and_cancels_too(tiny_checkpoint, alone):
    """The same seam on transformers' engine: requests handed over from a thread join its next
    round, a cancelled one is never delivered, and the run waits until submissions close."""
    from synth.engine.reference_engine import TransformersEngine

    engine = TransformersEngine.load(tiny_checkpoint, device="cpu", dtype="float64", compile=False)

    reported = []

    def verdicts():
        engine.submit(LATER)
        engine.cancel("later-b", reported.append)
        engine.close_submissions()

    def on_result(result):
        if result.request_id == "next":
            threading.Timer(0.3, verdicts).start()

    engine.open_submissions()
    results = engine.run([NEXT], GREEDY, on_result=on_result)
    assert sorted(r.request_id for r in results) == ["later-a", "next"] and reported == [0]  # dropped while waiting
    for r in results:
        np.testing.assert_array_equal(r.codes, alone[r.request_id], err_msg=r.request_id)
