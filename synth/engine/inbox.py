"""Work handed to a running engine from other threads, and whether more is coming.

This module owns `Inbox`: requests to generate and request ids to cancel, put from any thread
(e.g. a QC stage whose verdicts arrive while the engine generates) and taken, in the order
they were put, by the engine's frame loop between frames; and a count of the callers that
still mean to put work, which keeps the engine's `run` going (waiting, when it has nothing to
do) until the last of them is done. It knows nothing about what the items are: the fast
engine prepares and schedules them (`synth.engine.fast_engine`).
"""

from __future__ import annotations

import threading
from typing import Any, Literal

Kind = Literal["submit", "cancel"]


class Inbox:
    """A thread-safe list of (kind, value) items and a count of open submitters."""

    def __init__(self):
        self._changed = threading.Condition()
        self._items: list[tuple[Kind, Any]] = []
        self._open = 0

    def put(self, kind: Kind, value: Any) -> None:
        with self._changed:
            self._items.append((kind, value))
            self._changed.notify_all()

    def take(self) -> list[tuple[Kind, Any]]:
        """Every item put so far, in order, and none left behind."""
        if not self._items:  # the frame loop's usual case, every frame: no lock taken
            return []
        with self._changed:
            items, self._items = self._items, []
        return items

    def clear(self) -> None:
        with self._changed:
            self._items = []

    def open(self) -> None:
        """One more caller means to put work: the engine's run does not end before its `close`."""
        with self._changed:
            self._open += 1

    def close(self) -> None:
        """One caller has put all it meant to (a close without an open is ignored)."""
        with self._changed:
            self._open = max(0, self._open - 1)
            self._changed.notify_all()

    @property
    def is_open(self) -> bool:
        return self._open > 0

    def wait(self, timeout_s: float | None = None) -> None:
        """Until an item is put or the last submitter closes (or `timeout_s` passes)."""
        with self._changed:
            self._changed.wait_for(lambda: self._items or not self._open, timeout_s)
