"""The scorer in a process of its own, at a lower CPU priority, beside a process that generates.

This module owns `ScorerProcess`: `TakeScorer`'s calls (`score`, `stats`, `placement`,
`settings`, `sample_rate_hz`, `close`) with its models loaded, warmed up and run in a child
process: a fresh interpreter (`python -m synth.qc.scorer_process`, a socket for its pipe), so
nothing of the parent's CUDA context, Ray connection or threads is forked, and no main module
(a Ray worker's, a job script's) is imported again as multiprocessing's spawn would.
Why a process: beside the frame loop in one process, the scorer's Python (Whisper's decoding
loop, the VAD, feature extraction) holds the GIL the frame loop needs between its kernels, and
its torch calls share the process's allocator: on the 2-core box the tiny engine's frames went
from 25 to 40-85 ms while a scorer thread ran, and DNSMOS cost 25 % more CPU beside the frame
loop in its process than beside the same load in another (BENCHMARKS.md, *QC in its own
process*). And only a process can be given a lower priority: the OS then gives generation the
cores it asks for and QC every cycle left, where a lowered thread would stall the frame loop
each time the OS preempted it holding the GIL.

The child loads and warms up its models while its parent goes on (an actor loading its engine,
generating its first frames); the first batch waits for what is left. Takes go to the child
pickled over a pipe (a batch of 6 s takes is a few MB); a reference voice
crosses once, under a key, and the child keeps it (so its embedding is kept there, as
`TakeScorer` keeps it by the array). A failure in the child comes back with its traceback as
`ScorerProcessError`; a child that dies (killed, out of memory) is one too, with its exit code.
The child exits when told, or when its parent's end of the pipe closes (the parent died). It
knows nothing about outputs, verdicts or Ray.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from typing import Sequence

from synth.qc.policy import QcSettings
from synth.qc.scorer import MAX_REFERENCES, ScorerStats, Take

NICE = 10  # the child's niceness above its parent's: generation first, QC on every cycle it leaves
CLOSE_TIMEOUT_S = 30.0


class ScorerProcessError(RuntimeError):
    """The QC process failed or died; the message holds its traceback or its exit code."""


class ScorerProcess:
    """A `TakeScorer` in a child process; see the module docstring."""

    def __init__(self, settings: QcSettings, sample_rate_hz: int, *, device: str = "cpu", nice: int = NICE):
        """Start the child, which loads and warms up its models (`TakeScorer.warm_up`) while the caller
        goes on: the first `score` (or `placement`, `load`) waits for it."""
        self.settings, self.sample_rate_hz, self.device = settings, sample_rate_hz, device
        self.num_workers = settings.num_workers
        self.stats = ScorerStats()
        self._references: dict[int, tuple[object, int]] = {}  # id(reference) -> (the array, kept alive; its key)
        self._next_key = 0
        mine, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self._process = subprocess.Popen([sys.executable, "-m", "synth.qc.scorer_process", str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=env)
        theirs.close()  # the child's end lives in the child only: its exit shows here as EOF
        self._conn = Connection(mine.detach())
        self._send((settings, sample_rate_hz, device, nice))
        self._placement: dict[str, str] | None = None  # the child's first reply: it is loaded and warmed up

    @property
    def placement(self) -> dict[str, str]:
        """Where each model runs (`TakeScorer.placement`), once the child has loaded them."""
        self._ready()
        assert self._placement is not None
        return self._placement

    def _ready(self) -> None:
        """Wait for the child's models (the first call waits; the actor's own start-up, its engine's
        warm-up and its first frames went on meanwhile)."""
        if self._placement is None:
            self._placement = self._reply()

    def load(self) -> "ScorerProcess":
        """Wait until the child has loaded and warmed up its models; returns self."""
        self._ready()
        return self

    def warm_up(self) -> "ScorerProcess":
        return self.load()  # the child warms up as it loads

    def score(self, takes: Sequence[Take]) -> list[dict]:
        """`TakeScorer.score` in the child: one dict of every metric column per take, in order."""
        self._ready()
        new: dict[int, object] = {}
        # past the bound both sides start again: the child forgets its own with this flag
        forget = len(self._references) + len({id(t.reference) for t in takes}) > MAX_REFERENCES
        if forget:
            self._references.clear()
        wire = []
        for take in takes:
            key = None
            if take.reference is not None:
                kept = self._references.get(id(take.reference))
                if kept is None or kept[0] is not take.reference:
                    kept = self._references[id(take.reference)] = (take.reference, self._next_key)
                    new[self._next_key] = take.reference
                    self._next_key += 1
                key = kept[1]
            wire.append((replace(take, reference=None), key))
        self._send(("score", wire, new, forget))
        return self._reply()

    def close(self) -> None:
        """Stop the child (its models go with it)."""
        if self._process.poll() is None:
            try:
                self._conn.send(None)
                self._process.wait(CLOSE_TIMEOUT_S)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self._process.kill()
                self._process.wait()
        self._conn.close()

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except (BrokenPipeError, OSError) as err:
            raise self._died() from err

    def _reply(self):
        try:
            kind, payload, stats = self._conn.recv()
        except (EOFError, OSError) as err:
            raise self._died() from err
        if kind == "error":
            raise ScorerProcessError(f"the QC process failed:\n{payload}")
        self.stats = ScorerStats(**stats)
        return payload

    def _died(self) -> ScorerProcessError:
        try:
            code = self._process.wait(5.0)
        except subprocess.TimeoutExpired:
            code = None
        return ScorerProcessError(f"the QC process (pid {self._process.pid}) died, exit code {code}")


def _serve(conn: Connection) -> None:
    """The child: load and warm up the scorer its parent describes, then score what the parent sends
    until told to stop or until the parent's end of the pipe closes."""
    try:
        settings, sample_rate_hz, device, nice = conn.recv()
    except (EOFError, OSError):
        return
    try:
        os.nice(nice)  # before any thread starts: the workers inherit it
    except OSError:
        pass  # a platform that refuses: the same results, without the priority
    try:
        from synth.qc.scorer import TakeScorer

        scorer = TakeScorer(settings, sample_rate_hz, device=device).load().warm_up()
        conn.send(("ok", scorer.placement, asdict(scorer.stats)))
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent, which raises it
        conn.send(("error", traceback.format_exc(), None))
        return
    references: dict[int, object] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if message is None:
            break
        _, wire, new, forget = message
        try:
            if forget:
                references.clear()
            references.update(new)
            takes = [replace(take, reference=references[key]) if key is not None else take for take, key in wire]
            conn.send(("ok", scorer.score(takes), asdict(scorer.stats)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc(), asdict(scorer.stats)))
    scorer.close()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1])))
