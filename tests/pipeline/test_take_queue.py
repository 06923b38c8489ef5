"""The QC stage's queue and thread alone (no models): batches, backpressure, and failure."""

from __future__ import annotations

import threading
import time

import pytest

from synth.pipeline.qc_stage import QcStage, QcStageError


def test_everything_queued_while_the_thread_is_busy_is_scored_as_one_batch_in_order():
    release, applied = threading.Event(), []

    def score(items):
        release.wait(5)
        return [{"x": i} for i in items]

    stage = QcStage(score, lambda items, metrics: applied.append((items, metrics)), max_queued=10)
    for i in range(5):
        stage.put(i)
    release.set()
    stage.close()
    assert [i for items, _ in applied for i in items] == [0, 1, 2, 3, 4]
    assert all(m == [{"x": i} for i in items] for items, m in applied)
    assert len(applied) < 5 and stage.error is None  # the first call took one, the next the four queued meanwhile


def test_a_full_queue_holds_the_caller_back_until_the_thread_takes_it():
    release = threading.Event()
    stage = QcStage(lambda items: [release.wait(5) and {} for _ in items], lambda items, metrics: None, max_queued=1)
    stage.put("a")  # taken by the thread, which waits in score
    time.sleep(0.1)
    stage.put("b")  # queued: the queue is full
    done = threading.Event()
    threading.Thread(target=lambda: (stage.put("c"), done.set()), daemon=True).start()
    assert not done.wait(0.3)  # held back
    release.set()
    assert done.wait(5)
    stage.close()
    assert stage.waited_s > 0.2


def test_a_failure_on_the_thread_is_kept_reported_and_raised_to_the_next_put():
    errors = []
    stage = QcStage(lambda items: 1 / 0, lambda items, metrics: None, max_queued=4, on_error=errors.append)
    stage.put("a")
    deadline = time.time() + 5
    while stage.error is None and time.time() < deadline:
        time.sleep(0.01)
    assert isinstance(stage.error, ZeroDivisionError) and errors == [stage.error]
    with pytest.raises(QcStageError, match="ZeroDivisionError") as raised:
        stage.put("b")
    assert raised.value.__cause__ is stage.error
    stage.close()  # returns: the thread has ended
