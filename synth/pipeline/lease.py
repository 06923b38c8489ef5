"""One writer at a time: the lease a run holds on its output directory.

This module owns `Lease`: `OUT/_lease.json` names the run writing OUT (a run id, the
host, the pid, when it started, its command) and carries a heartbeat that a thread of
the driver renews every few seconds. A run takes the lease before it cleans up or
writes anything and gives it back at the end. While another run's lease is live, a new
run is refused, saying who holds it; a lease whose heartbeat is older than
`stale_after_s`, or whose holder ran on this host and is dead, is taken over (a driver
killed with `kill -9` leaves one). Actors carry the run id and check it before each
commit (`OutputDir.check_lease`), so a run that lost its lease commits nothing more.

Locally the lease is created with O_EXCL, so of two runs starting at once exactly one
wins; on object stores, which offer no such write here, the new lease is read back after
a pause to confirm it held. It knows nothing about Ray or the model.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from synth.pipeline import storage
from synth.pipeline.faults import crash_point
from synth.pipeline.output import LEASE_FILE, OutputDir, OutputError, OutputWriteError

OBJECT_STORE_SETTLE_S = 1.0  # object stores: how long to wait before reading a new lease back


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _describe(holder: dict, now: float) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started_at", 0)))
    return (f"run {holder.get('run_id')} on host {holder.get('host')}, pid {holder.get('pid')}, started {started}, "
            f"last heartbeat {now - holder.get('heartbeat_at', 0):.0f} s ago, command: {holder.get('command')}")


class Lease:
    """The lease of one run on one output; use `Lease.acquire(...)` as a context manager."""

    def __init__(self, output: OutputDir, record: dict, heartbeat_s: float, log):
        self.output = output
        self.record = record
        self.run_id: str = record["run_id"]
        self.heartbeat_s = heartbeat_s
        self.log = log
        self.lost = False  # set by the heartbeat when another run holds the lease now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="synth-lease", daemon=True)

    @classmethod
    def acquire(cls, output: OutputDir, *, stale_after_s: float, log=print) -> "Lease":
        """Take OUT's lease (refused while another live run holds it) and start its heartbeat."""
        now = time.time()
        record = {"run_id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
                  "started_at": now, "heartbeat_at": now, "command": " ".join(sys.argv)[:300]}
        location = output.at(LEASE_FILE)
        for _ in range(5):
            if storage.create_exclusive(location, json.dumps(record).encode()):
                if output.location.is_local or cls._confirmed(output, record):
                    lease = cls(output, record, heartbeat_s=max(0.5, stale_after_s / 6), log=log)
                    lease._thread.start()
                    crash_point("lease-taken")
                    return lease
                continue
            holder = output.lease_holder()
            if holder is None and storage.exists(location):
                holder = {"run_id": "?", "heartbeat_at": 0.0}  # unreadable: a write cut short long ago
            if holder is None:
                continue  # released in between: try again
            now = time.time()
            dead = holder.get("host") == record["host"] and not _alive(int(holder.get("pid", -1)))
            if not dead and now - holder.get("heartbeat_at", 0) < stale_after_s:
                raise OutputError(
                    f"{output.uri} is being written by another synth run ({_describe(holder, now)}). Only one run "
                    f"may write an output: wait for it to finish. A run that died on another host leaves a lease "
                    f"that is taken over once it has had no heartbeat for {stale_after_s:.0f} s "
                    "(job.lease_stale_seconds)."
                )
            cls._take_over(output, holder, dead, log)
        raise OutputError(f"{output.uri}: could not take the output's lease (other runs keep taking it)")

    @staticmethod
    def _take_over(output: OutputDir, holder: dict, dead: bool, log) -> None:
        """Move a dead or stale lease aside (of two runs doing this, one moves it) and drop it."""
        aside = storage.temp_name(LEASE_FILE)
        try:
            storage.move(output.at(LEASE_FILE), output.at(aside))
        except FileNotFoundError:
            return  # another run took it first
        output.delete(aside)
        log(f"synth: took over the output's lease from a {'dead' if dead else 'stale'} run "
            f"({_describe(holder, time.time())})")

    @staticmethod
    def _confirmed(output: OutputDir, record: dict) -> bool:
        time.sleep(OBJECT_STORE_SETTLE_S)
        holder = output.lease_holder()
        return holder is not None and holder.get("run_id") == record["run_id"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.output.lease_holder()
            if holder is None or holder.get("run_id") != self.run_id:
                self.lost = True
                self.log(f"synth: lost the output's lease to another run ({holder and _describe(holder, time.time())})")
                return
            self.record["heartbeat_at"] = time.time()
            try:
                self.output.write(LEASE_FILE, json.dumps(self.record).encode())
            except OutputWriteError as e:  # the run's own writes fail too and stop it; keep trying meanwhile
                self.log(f"synth: could not renew the output's lease: {e}")

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (if this run still holds it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        holder = self.output.lease_holder()
        if holder is not None and holder.get("run_id") == self.run_id:
            self.output.delete(LEASE_FILE)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
