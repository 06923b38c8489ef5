"""One writer at a time: the lease a command holds on its store.

This module owns `Lease`: `STORE/_lease.json` names the command writing the store (a run
id, its kind, the host, the pid and when that process started, the command line) and
carries a heartbeat that a thread renews every `heartbeat_s`, with the window after which
the holder itself says its lease is stale. A command takes the lease before it cleans up
or writes anything and gives it back at the end. While another command's lease is live,
a new one is refused, saying who holds it. A lease is taken over only when its holder is
dead: on the same host, when its process is gone (a live pid is never stale, whatever
the settings); on another host, when its heartbeat is older than the stale window *the
holder recorded*. A lease file that cannot be read (damaged by hand, or by an older
version's torn write) is taken over and said so; a directory in its place is refused.
Writers of units carry the run id and check it before each commit
(`synth.store.store.Store.check_lease`), so a command that lost its lease commits nothing
more.

Locally the lease is written whole to a temp name and hard-linked into place, so of two
commands starting at once exactly one wins and nobody reads half a lease; on object
stores, which offer no such write here, the new lease is read back after a pause to
confirm it held. It knows nothing about Ray or the model.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

import pyarrow as pa

from synth.store import storage
from synth.store.errors import OutputWriteError, StoreError, describe_os_error
from synth.store.faults import crash_point
from synth.store.layout import LEASE_FILE
from synth.store.store import Store

OBJECT_STORE_SETTLE_S = 1.0  # object stores: how long to wait before reading a new lease back
HEARTBEATS_PER_WINDOW = 6  # heartbeats within one stale window


def process_started(pid: int) -> str | None:
    """When a process started (clock ticks since boot, from /proc), to tell it from a later
    process that reuses its pid; None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22, counted after the command name


def alive(pid: int, started: str | None) -> bool:
    """Whether the process `pid` that started at `started` (None: unknown) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return started is None or process_started(pid) in (None, started)


def _describe(holder: dict, now: float) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("started_at", 0)))
    return (f"{holder.get('kind', 'run')} {holder.get('run_id')} on host {holder.get('host')}, pid {holder.get('pid')}, "
            f"started {started}, last heartbeat {now - holder.get('heartbeat_at', 0):.0f} s ago, command: "
            f"{holder.get('command')}")


class Lease:
    """The lease of one command on one store; use `Lease.acquire(...)` as a context manager."""

    def __init__(self, store: Store, record: dict, log):
        self.store = store
        self.record = record
        self.run_id: str = record["run_id"]
        self.heartbeat_s: float = record["heartbeat_s"]
        self.log = log
        self.lost = False  # set by the heartbeat when another command holds the lease now
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="synth-lease", daemon=True)

    @classmethod
    def acquire(cls, store: Store, *, stale_after_s: float, log=print) -> "Lease":
        """Take the store's lease (refused while another live command holds it) and start its heartbeat."""
        now = time.time()
        record = {"run_id": uuid.uuid4().hex[:12], "kind": store.layout.kind, "host": socket.gethostname(),
                  "pid": os.getpid(), "pid_started": process_started(os.getpid()), "started_at": now,
                  "heartbeat_at": now, "heartbeat_s": max(0.5, stale_after_s / HEARTBEATS_PER_WINDOW),
                  "stale_after_s": stale_after_s, "command": " ".join(sys.argv)[:300]}
        location = store.at(LEASE_FILE)
        for _ in range(5):
            try:
                created = storage.create_exclusive(location, json.dumps(record).encode())
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"cannot take the lease of {store.uri} (writing {location.uri}): "
                                 f"{describe_os_error(e)}. Nothing was written; fix the output, then run the same "
                                 "command again.") from None
            if created:
                if store.location.is_local or cls._confirmed(store, record):
                    lease = cls(store, record, log)
                    lease._thread.start()
                    crash_point("lease-taken")
                    return lease
                continue
            holder = cls._holder(store)
            if holder is None:
                continue  # released in between: try again
            why = cls._takeover_reason(holder, record)
            if why is None:
                raise StoreError(
                    f"{store.uri} is being written by another synth command ({_describe(holder, time.time())}). "
                    "Only one command may write a store: wait for it to finish. A lease whose holder died on this "
                    "host is taken over at once; one from another host once it has had no heartbeat for the "
                    "window its holder recorded.")
            cls._take_over(store, holder, why, log)
        raise StoreError(f"{store.uri}: could not take the lease (other commands keep taking it)")

    @staticmethod
    def _holder(store: Store) -> dict | None:
        """The lease on file: its record; {"damaged": ...} for one that cannot be read; None if it is gone."""
        location = store.at(LEASE_FILE)
        try:
            data = storage.read_bytes(location)
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException) as e:
            if storage.is_dir(location):
                raise StoreError(f"{location.uri} is a directory, not synth's lease file: synth does not touch it. "
                                 "Move it away, then run the command again.") from None
            raise StoreError(f"cannot read {location.uri}: {describe_os_error(e)}") from None
        try:
            holder = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            holder = None
        return holder if isinstance(holder, dict) else {"damaged": f"{len(data)} bytes that are not a lease"}

    @staticmethod
    def _takeover_reason(holder: dict, mine: dict) -> str | None:
        """Why the lease on file may be taken over ("dead", "stale", "damaged"); None while its holder may live."""
        if "damaged" in holder:
            return "damaged"
        if holder.get("host") == mine["host"]:
            try:
                pid = int(holder.get("pid", -1))
            except (TypeError, ValueError):
                return "damaged"
            return None if pid > 0 and alive(pid, holder.get("pid_started")) else "dead"
        window = holder.get("stale_after_s")
        window = float(window) if isinstance(window, (int, float)) and window > 0 else mine["stale_after_s"]
        beat = holder.get("heartbeat_at")
        age = time.time() - (beat if isinstance(beat, (int, float)) else 0.0)
        return "stale" if age > window else None

    @staticmethod
    def _take_over(store: Store, holder: dict, why: str, log) -> None:
        """Move a dead, stale or damaged lease aside (of two commands doing this, one moves it) and drop it."""
        aside = storage.temp_name(LEASE_FILE)
        try:
            storage.move(store.at(LEASE_FILE), store.at(aside))
        except FileNotFoundError:
            return  # another command took it first
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot take over the lease of {store.uri}: {describe_os_error(e)}") from None
        store.delete(aside)
        said = holder.get("damaged", "its fields are not a lease's") if why == "damaged" else _describe(holder, time.time())
        log(f"synth: took over the lease of {store.uri} from a {why} holder ({said})")

    @staticmethod
    def _confirmed(store: Store, record: dict) -> bool:
        time.sleep(OBJECT_STORE_SETTLE_S)
        holder = store.lease_holder()
        return holder is not None and holder.get("run_id") == record["run_id"]

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = self.store.lease_holder()
            if holder is None or holder.get("run_id") != self.run_id:
                self.lost = True
                self.log(f"synth: lost the lease of {self.store.uri} to another command "
                         f"({holder and _describe(holder, time.time())})")
                return
            self.record["heartbeat_at"] = time.time()
            try:
                self.store.write(LEASE_FILE, json.dumps(self.record).encode())
            except OutputWriteError as e:  # the command's own writes fail too and stop it; keep trying meanwhile
                self.log(f"synth: could not renew the lease: {e}")

    def release(self) -> None:
        """Stop the heartbeat and give the lease back (if this command still holds it)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        holder = self.store.lease_holder()
        if holder is not None and holder.get("run_id") == self.run_id:
            try:
                self.store.delete(LEASE_FILE)
            except OutputWriteError as e:  # a read-only or full store: the next command takes the dead lease over
                self.log(f"synth: could not give the lease back ({e}); the next command takes it over")

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
