"""The live progress bar of a run whose driver has a terminal.

This module owns `ShardBar`: where the driver's stderr is a terminal, a tqdm bar over the
run's shards with the rate and the ETA, its postfix the turns, audio and speed so far, and
the run's log lines printed above it (`ShardBar.log`) so that the bar stays at the bottom.
Where stderr is not a terminal (under `ray job submit`, in a log file) there is no bar and
the log lines are printed as they always were. What the numbers are is
`synth.pipeline.dispatcher.Progress`'s; it knows nothing about Ray or the model.
"""

from __future__ import annotations

import sys
from typing import Callable, TextIO


class ShardBar:
    """A bar over `total` shards, `done_before` of them done by earlier runs; inert without a terminal."""

    def __init__(self, total: int, done_before: int, log: Callable[[str], None], stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self._log = log
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done_before, unit="shard", desc="synth", file=self.stream,
                            dynamic_ncols=True, smoothing=0.3,
                            bar_format="{l_bar}{bar:20}{r_bar}")  # a short bar leaves room for the totals

    def log(self, message: str) -> None:
        """A log line: above the bar when there is one, else as the run prints it."""
        if self.bar is None:
            self._log(message)
        else:
            self.bar.write(message, file=self.stream)

    def update(self, shards_ended: int, rows: int, audio_seconds: float, x_real_time: float) -> None:
        """Move the bar to `shards_ended` (done or failed, earlier runs' included) with the totals so far."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"{rows} turns, {audio_seconds / 3600:.3f} h audio, {x_real_time:.2f}x real time",
                                 refresh=False)
        self.bar.update(shards_ended - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
