"""The live progress bar of a run whose driver has a terminal.

This module owns `ShardBar`: where the driver's stderr is a terminal, a tqdm bar over the
run's shards with the rate and the ETA, its postfix the turns, audio and speed so far, and
every other line printed above it so that the bar stays at the bottom: the run's log lines
(`ShardBar.log`), and whatever else writes to the driver's stdout or stderr while the bar
is drawn, such as the lines Ray forwards from the actors (`(SynthActor pid=...) ...`),
which would otherwise be glued onto the bar's line. Where stderr is not a terminal (under
`ray job submit`, in a log file) there is no bar, nothing is redirected, and the log lines
are printed as they always were. What the numbers are is
`synth.pipeline.dispatcher.Progress`'s; it knows nothing about Ray or the model.
"""

from __future__ import annotations

import io
import sys
from typing import Callable, TextIO


class _AboveBar(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr while a bar is drawn: each whole line is written to
    the real stream with the bar cleared first and drawn again after (a partial line waits)."""

    def __init__(self, bar, target: TextIO):
        self._bar, self._target, self._pending = bar, target, ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            lines, self._pending = self._pending.rsplit("\n", 1)
            _above(self._bar, self._target, lines + "\n")
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def isatty(self) -> bool:
        return self._target.isatty()

    @property
    def encoding(self):
        return getattr(self._target, "encoding", "utf-8")

    def fileno(self) -> int:
        return self._target.fileno()

    def __getattr__(self, name: str):  # anything else (`buffer`, `errors`...) is the real stream's
        return getattr(self._target, name)

    def close_line(self) -> None:
        """Write out a partial line left when the bar goes."""
        if self._pending:
            self._target.write(self._pending)
            self._pending = ""


def _above(bar, target: TextIO, text: str) -> None:
    """Write `text` to `target` with the bar cleared before and redrawn after, under the bar's lock."""
    with bar.get_lock():
        bar.clear(nolock=True)
        target.write(text)
        target.flush()
        bar.refresh(nolock=True)


class ShardBar:
    """A bar over `total` shards, `done_before` of them done by earlier runs; inert without a terminal.

    While the bar is drawn, sys.stdout and sys.stderr are replaced by writers that print above it
    (`close` puts them back)."""

    def __init__(self, total: int, done_before: int, log: Callable[[str], None], stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self._log = log
        self.bar = None
        self._replaced: list[tuple[str, TextIO, _AboveBar]] = []
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done_before, unit="shard", desc="synth", file=self.stream,
                            dynamic_ncols=True, smoothing=0.3,
                            bar_format="{l_bar}{bar:20}{r_bar}")  # a short bar leaves room for the totals
            for name in ("stdout", "stderr"):  # Ray prints the actors' lines to whatever these are at the time
                real = getattr(sys, name)
                above = _AboveBar(self.bar, real)
                setattr(sys, name, above)
                self._replaced.append((name, real, above))

    def log(self, message: str) -> None:
        """A log line: above the bar when there is one, else as the run prints it."""
        if self.bar is None:
            self._log(message)
        else:
            _above(self.bar, self.stream, message + "\n")

    def update(self, shards_ended: int, rows: int, audio_seconds: float, x_real_time: float) -> None:
        """Move the bar to `shards_ended` (done or failed, earlier runs' included) with the totals so far."""
        if self.bar is None:
            return
        self.bar.set_postfix_str(f"{rows} turns, {audio_seconds / 3600:.3f} h audio, {x_real_time:.2f}x real time",
                                 refresh=False)
        self.bar.update(shards_ended - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            for name, real, above in reversed(self._replaced):
                if getattr(sys, name) is above:  # someone else's replacement since is left alone
                    setattr(sys, name, real)
                above.close_line()
            self._replaced = []
            self.bar.close()
