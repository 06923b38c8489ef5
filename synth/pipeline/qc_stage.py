"""The QC stage beside generation: takes queue up, one thread scores them in batches, verdicts flow back.

This module owns `QcStage`: a bounded queue that the engine's result path `put`s finished
takes on (returning at once while there is room), and one thread that takes everything
queued as one batch, scores it (`score`, e.g. `synth.qc.scorer.TakeScorer.score`) and hands
batch and metrics to `apply` (the verdicts: retakes, a chain's next turn, accepted rows).
Backpressure: when `max_queued` takes wait, `put` blocks until the thread takes them, so the
engine's result path, and with it the engine's admission of follow-ups, slows down instead
of memory growing. An exception on the thread stops the stage: it is kept as `error`,
`on_error` is told (e.g. to let the engine's run end), and a blocked or later `put` raises. It
imports no torch and knows nothing about engines, chains or outputs.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence


class QcStageError(RuntimeError):
    """The stage's thread failed; the original exception is the cause."""


class QcStage:
    """One scoring thread behind a bounded queue; see the module docstring."""

    def __init__(self, score: Callable[[list], Sequence[dict]], apply: Callable[[list, Sequence[dict]], None], *,
                 max_queued: int = 64, on_error: Callable[[BaseException], None] | None = None,
                 name: str = "synth-qc"):
        """score(items) -> one metrics dict per item; apply(items, metrics): the verdicts (on the thread)."""
        if max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {max_queued}")
        self.score, self.apply, self.on_error = score, apply, on_error
        self.max_queued = max_queued
        self.error: BaseException | None = None
        self.batches: list[int] = []  # items per scoring call
        self.waited_s = 0.0  # seconds `put` callers were held back by a full queue
        self.busy_s = 0.0  # seconds the thread spent scoring and applying
        self._queue: list = []
        self._changed = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        """Queue one take; blocks while `max_queued` wait (backpressure). Raises if the stage failed."""
        with self._changed:
            if len(self._queue) >= self.max_queued and self.error is None:
                t0 = time.perf_counter()
                self._changed.wait_for(lambda: len(self._queue) < self.max_queued or self.error is not None)
                self.waited_s += time.perf_counter() - t0
            self._raise_if_failed()
            self._queue.append(item)
            self._changed.notify_all()

    def close(self, *, discard: bool = False) -> None:
        """Stop the thread once the queue is empty (discard: drop what is queued first) and wait for
        it. The thread's error, if it had one, is `error`."""
        with self._changed:
            if discard:
                self._queue = []
            self._closing = True
            self._changed.notify_all()
        self._thread.join()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise QcStageError(f"the QC stage failed: {self.error.__class__.__name__}: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                items, self._queue = self._queue, []
                self._changed.notify_all()  # room again: wake a blocked `put`
            if not items:
                return
            t0 = time.perf_counter()
            try:
                metrics = self.score(items)
                self.batches.append(len(items))
                self.apply(items, metrics)
            except BaseException as e:  # noqa: BLE001 - any failure must reach the run, never hang it
                with self._changed:
                    self.error = e
                    self._queue = []
                    self._changed.notify_all()
                if self.on_error is not None:
                    self.on_error(e)
                return
            finally:
                self.busy_s += time.perf_counter() - t0
