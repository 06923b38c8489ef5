"""The live bar: drawn with rate and ETA on a terminal, absent (log lines as before) elsewhere."""

from __future__ import annotations

import io

from synth.pipeline.progress_bar import ShardBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_with_rate_eta_and_totals_and_the_log_lines_above_it():
    screen, logged = Terminal(), []
    bar = ShardBar(total=4, done_before=1, log=logged.append, stream=screen)
    bar.log("actor ready: pid 1")
    bar.update(2, rows=10, audio_seconds=36.0, x_real_time=1.5)
    bar.update(3, rows=20, audio_seconds=72.0, x_real_time=1.75)
    bar.close()
    drawn = screen.getvalue()
    assert logged == []  # the log line went above the bar, on the terminal
    assert "actor ready: pid 1\n" in drawn
    last = drawn.rstrip("\n").split("\r")[-1]  # the bar as it was left
    assert "3/4" in last and ("shard/s" in last or "s/shard" in last), last
    assert "<" in last  # elapsed<remaining: the ETA
    assert "20 turns, 0.020 h audio, 1.75x real time" in last, last


def test_without_a_terminal_there_is_no_bar_and_the_log_lines_are_unchanged():
    stream, logged = io.StringIO(), []
    bar = ShardBar(total=4, done_before=0, log=logged.append, stream=stream)
    bar.log("[1/4 shards] 5 turns")
    bar.update(1, rows=5, audio_seconds=6.0, x_real_time=1.0)
    bar.close()
    assert logged == ["[1/4 shards] 5 turns"] and stream.getvalue() == ""


def test_lines_ray_forwards_from_the_actors_print_above_the_bar_not_glued_to_it(monkeypatch):
    """Ray's driver prints each actor line to whatever sys.stdout is at the time: while the bar is
    drawn, that line must start on a line of its own, with the bar drawn again below it."""
    from ray._private.worker import print_to_stdstream

    screen = Terminal()
    monkeypatch.setattr("sys.stdout", screen)  # one terminal: stdout and the bar's stderr share the screen
    bar = ShardBar(total=4, done_before=0, log=lambda m: None, stream=screen)
    bar.update(1, rows=5, audio_seconds=6.0, x_real_time=1.0)
    print_to_stdstream({"ip": "127.0.0.1", "pid": 4242, "actor_name": "SynthActor", "task_name": None, "job": "01",
                        "is_err": False, "lines": ["model loaded in 3.2 s"]}, ignore_prefix=False)
    print("a partial", end="")  # a line not yet ended waits, and is written when the bar goes
    bar.update(2, rows=10, audio_seconds=12.0, x_real_time=1.0)
    bar.close()
    import sys

    assert sys.stdout is screen  # put back
    visible = [line.split("\r")[-1] for line in screen.getvalue().split("\n")]  # what each screen line shows
    actor = [line for line in visible if "model loaded in 3.2 s" in line]
    assert len(actor) == 1 and "SynthActor pid=4242" in actor[0] and "synth:" not in actor[0], visible
    assert "|" not in actor[0]  # no bar before it on its line
    assert any("2/4" in line for line in visible) and "a partial" in screen.getvalue()
