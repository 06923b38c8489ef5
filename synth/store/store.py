"""The committed store: one protocol for every directory synth writes.

`synth run`, `book`, `import`, `export`, `rescore` and `train` each write a `Store`; what
differs between them is only their `Layout` (what a unit is and how its files are named)
and their identity. The store owns the rest:

- **claim**: a directory is new or empty (it becomes this kind's store), or already this
  kind's store (`_synth.json` says so), or refused, naming what is in it. Adopting a
  foreign directory is allowed only where the kind offers it, and refused when a file of
  the user's has a name the kind would write.
- **identity**: what the store is for (inputs with their fingerprints, the settings that
  shape what it holds). `record_identity` records it, or checks a relaunch against it:
  the fixed part (inputs, plan, schema) must match, the rest may change only when allowed,
  and every distinct set of settings is kept with a hash that each unit's marker carries,
  so that a store says which units were made how.
- **units**: `write`/`write_stream` put files atomically (temp, fsync, rename; each
  returns its `FileRecord`), then `commit` writes the unit's marker last, only while this
  command holds the lease. `read_verified` reads a unit's file only if its bytes match the
  marker: caches that condition output (voice codes, a train set) are never trusted
  otherwise.
- **moving aside and deleting**: only the kind's own names (`Layout.owns`), quarantined
  under `_quarantine/<batch>/` or, for a unit file no marker lists, deleted.

Recovery and `synth verify` over a store are `synth.store.recovery`'s; the lease is
`synth.store.lease`'s. A failure of the store itself (full, read-only, unreachable, a file
where a directory should be) is an `OutputWriteError` (the command stops, a relaunch
resumes) or, before anything was written, a `StoreError`. It knows nothing about
manifests, models or Ray.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from typing import Iterable, Sequence

import pyarrow as pa

from synth import __version__
from synth.store import storage
from synth.store.errors import (
    LeaseLost,
    OutputWriteError,
    StoreError,
    describe_os_error,
)
from synth.store.faults import crash_point
from synth.store.layout import (
    LEASE_FILE,
    OWNER_RECORD,
    PROGRESS_DIR,
    QUARANTINE_DIR,
    Layout,
    marked_unit,
    marker_file,
)
from synth.store.marker import Damaged, FileRecord, Marker, parse

MAX_FOUND_LISTED = 100  # files an adopted directory held, as `_synth.json` lists them
SETTINGS_HISTORY = "settings_history"  # the identity file's list of every settings set the store was written with


def canonical_hash(value) -> str:
    """sha256 of a JSON value written canonically (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def differences(old, new, prefix: str = "") -> list[str]:
    """`path: was X, now Y` for each leaf of two JSON values that differs (dotted paths into dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in sorted(set(old) | set(new), key=str)
                for line in differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))]
    if old == new:
        return []
    return [f"{prefix or 'value'}: was {json.dumps(old)[:200]}, now {json.dumps(new)[:200]}"]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Store:
    """One store directory of one kind; see the module docstring.

    run_id: the command writing it (markers record it, and a commit needs its lease); None
    for readers and tests. settings: the hash `record_identity` returned, recorded in markers."""

    def __init__(self, location: storage.Location, layout: Layout, *, run_id: str | None = None,
                 settings: str | None = None):
        self.location = location
        self.layout = layout
        self.run_id = run_id
        self.settings = settings

    @classmethod
    def at_uri(cls, uri: str, layout: Layout, **kwargs) -> "Store":
        return cls(storage.resolve(uri), layout, **kwargs)

    @property
    def uri(self) -> str:
        return self.location.uri

    def at(self, relative: str) -> storage.Location:
        """The location of a path relative to the store."""
        return self.location.join(relative)

    def _own(self, relative: str) -> None:
        if not self.layout.owns(relative):
            raise AssertionError(f"{relative!r} is not a name of a {self.layout.kind} store")

    # -- files ------------------------------------------------------------------------------

    def write(self, relative: str, data: bytes) -> FileRecord:
        """Write a file of the store atomically; its record (size, sha256)."""
        return self.write_stream(relative, [data])

    def write_stream(self, relative: str, chunks: Iterable[bytes]) -> FileRecord:
        """Write a file from byte chunks (memory: one chunk) atomically; its record. A failure of
        the store itself is an OutputWriteError that says how to resume."""
        self._own(relative)
        try:
            size, sha = storage.write_stream_atomic(self.at(relative), chunks)
        except (OSError, pa.ArrowException) as e:
            raise OutputWriteError(
                f"cannot write {self.at(relative).uri}: {describe_os_error(e)}. Nothing committed is lost: fix the "
                "output (free space, permissions, the store's address or credentials), then run the same command "
                "again to resume.") from None
        return FileRecord(relative, size, sha)

    def read(self, relative: str) -> bytes:
        return storage.read_bytes(self.at(relative))

    def exists(self, relative: str) -> bool:
        return storage.exists(self.at(relative))

    def read_record(self, relative: str) -> dict | None:
        """A JSON record of the store (a dict), or None if it does not exist; a record that is not
        one (cut short, garbled, not an object) is a StoreError naming it."""
        try:
            data = self.read(relative)
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot read {self.at(relative).uri}: {describe_os_error(e)}") from None
        try:
            record = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            record = None
        if not isinstance(record, dict):
            raise StoreError(f"{self.at(relative).uri} is damaged (not a JSON record; {len(data)} bytes)")
        return record

    def write_record(self, relative: str, record: dict) -> None:
        """One of the kind's records (run.json, export.json...), written whole."""
        self.write(relative, json.dumps(record, indent=2).encode())

    def file_sizes(self, *subdirs: str) -> dict[str, int]:
        """Path under the store -> size of every file below `subdirs` (one listing each; "" = everything)."""
        found = {}
        for sub in subdirs:
            prefix = f"{sub}/" if sub else ""
            for rel, size in storage.file_sizes(self.at(sub) if sub else self.location).items():
                found[prefix + rel] = size
        return found

    # -- ownership --------------------------------------------------------------------------

    def owner_record(self) -> dict | None:
        """`_synth.json`, or None where there is none; {} where it is damaged (it is still synth's)."""
        try:
            return self.read_record(OWNER_RECORD)
        except StoreError:
            return {}

    def recorded_kind(self) -> str | None:
        """The kind of store this directory is: `_synth.json`'s; this layout's kind where that record
        is missing, damaged or from before kinds were recorded but this kind's identity file is
        there; "unknown" for another such store; None where it is no store at all."""
        owner = self.owner_record()
        if owner and owner.get("kind"):
            return str(owner["kind"])
        if self.exists(self.layout.identity_file):
            return self.layout.kind
        return None if owner is None else "unknown"

    def claim(self, *, adopt: bool = False) -> None:
        """Make sure this directory is this kind's store (see the module docstring); refuses with a
        StoreError naming what is wrong, before anything is written."""
        try:
            self._claim(adopt)
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot use {self.uri}: {describe_os_error(e)}") from None

    def _claim(self, adopt: bool) -> None:
        loc = self.location
        self._check_parents()
        if storage.exists(loc) and not storage.is_dir(loc):
            raise StoreError(f"{self.uri} is a file, not a directory: give a directory (new, empty, or a "
                             f"{self.layout.kind} store synth made)")
        present = [name for name in storage.entries(loc) if storage.temp_target(name) not in (OWNER_RECORD, LEASE_FILE)]
        kind = self.recorded_kind()
        if kind is not None:
            self._check_kind(kind)
            if not self.owner_record():  # missing (a store from before the record) or damaged: rewritten
                self._write_owner({"adopted": False, "found": []})
            return
        if present and not adopt:
            shown = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
            how = (f"use a new --output, or pass {self.layout.adopt_option} to let synth write into this one (it then "
                   "deletes or moves only files named by its own layout)" if self.layout.adopt_option
                   else "use a new or empty directory")
            raise StoreError(f"{self.uri} is not empty and is not a synth {self.layout.kind} store (it holds {shown}). "
                             f"synth writes only into a new or empty directory or one it made: {how}.")
        if present:
            self._check_adoptable()
        if not self._write_owner({"adopted": bool(present), "found": present[:MAX_FOUND_LISTED]}, exclusive=True):
            # another command claimed it a moment ago: fine if it is of this kind (the lease then says who writes)
            for _ in range(20):
                if (kind := self.recorded_kind()) not in (None, "unknown"):
                    break
                time.sleep(0.05)
            self._check_kind(kind or "unknown")

    def _check_parents(self) -> None:
        """`--output FILE/sub`: a parent that is a file, named (locally; object stores have no such thing)."""
        if not self.location.is_local:
            return
        parent = self.location.path.rstrip("/")
        while (parent := parent.rsplit("/", 1)[0]) not in ("", "/"):
            info = self.location.fs.get_file_info(parent)
            if info.type == storage.pafs.FileType.File:
                raise StoreError(f"{self.uri}: {parent} is a file, so nothing can be written under it; give a "
                                 "directory path")
            if info.type == storage.pafs.FileType.Directory:
                return

    def _check_kind(self, kind: str) -> None:
        if kind == self.layout.kind:
            return
        what = "a synth store whose kind is not recorded" if kind == "unknown" else f"a synth {kind} store"
        raise StoreError(f"{self.uri} is {what}, and `synth {self.layout.kind}` writes only its own kind of store (a "
                         "run's output, a book, an import, an export, scores, a training run are never mixed): use "
                         "a new or empty directory")

    def _check_adoptable(self) -> None:
        """An adopted directory must hold no file under a name this kind writes (but a card, which
        is never overwritten unless synth wrote it)."""
        taken = [path for path in sorted(storage.file_sizes(self.location))
                 if self.layout.owns(path) and path != self.layout.card_file]
        if taken:
            shown = ", ".join(taken[:8]) + (f" and {len(taken) - 8} more" if len(taken) > 8 else "")
            raise StoreError(f"{self.uri} holds files under names synth would write ({shown}): synth never overwrites "
                             "what it did not write. Move them elsewhere, or use a new --output.")

    def _write_owner(self, fields: dict, *, exclusive: bool = False) -> bool:
        record = {"synth": __version__, "kind": self.layout.kind, "created_at": _now(), "host": socket.gethostname(),
                  **fields}
        data = json.dumps(record, indent=2).encode()
        if exclusive:
            try:
                return storage.create_exclusive(self.at(OWNER_RECORD), data)
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"cannot write {self.at(OWNER_RECORD).uri}: {describe_os_error(e)}") from None
        self.write(OWNER_RECORD, data)
        return True

    def open_existing(self, kinds: Iterable[str], what: str) -> str:
        """For a command that reads a store (or adds to one in place): its kind, which must be one
        of `kinds`; anything else is a StoreError saying that `what` needs one."""
        try:
            if not storage.is_dir(self.location):
                raise StoreError(f"{self.uri}: no such directory ({what} needs one)")
            kind = self.recorded_kind()
        except (OSError, pa.ArrowException) as e:
            raise StoreError(f"cannot read {self.uri}: {describe_os_error(e)}") from None
        if kind not in set(kinds):
            shown = "no synth store" if kind is None else f"a synth {kind} store"
            raise StoreError(f"{self.uri} is {shown}; {what} needs one of: {', '.join(sorted(kinds))}")
        return kind

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> dict | None:
        """The recorded identity, or None before the first launch; damaged is a StoreError."""
        return self.read_record(self.layout.identity_file)

    def record_identity(self, identity: dict, *, fixed: dict[str, str], allow_changes: bool = False,
                        log=print) -> str:
        """Record `identity`, or check a relaunch against the recorded one; returns the hash of its
        settings (every key not in `fixed`) for the markers.

        fixed: key -> why it can never change (a StoreError naming was/now otherwise); the other
        keys may change only with `allow_changes`, and each new set is appended to the history."""
        identity = json.loads(json.dumps(identity))  # as it reads back: tuples are lists
        settings = {k: v for k, v in identity.items() if k not in fixed}
        settings_hash = canonical_hash(settings)[:16]
        entry = {"settings": settings_hash, "first_run": self.run_id, "recorded_at": _now(), "values": settings}
        try:
            previous = self.identity()
        except StoreError:
            previous = self._repair_identity(identity, entry, log)
        if previous is None:
            self._write_identity(identity, [entry])
            return settings_hash
        for key, why in fixed.items():
            if previous.get(key) != identity.get(key):
                lines = differences(previous.get(key), identity.get(key), key)
                raise StoreError(f"{self.uri}: {why} ({'; '.join(lines[:8])}); use a new directory")
        changed = [k for k in sorted(set(settings) | set(previous) - set(fixed) - {SETTINGS_HISTORY})
                   if previous.get(k) != settings.get(k)]
        if changed and not allow_changes:
            details = "; ".join(line for k in changed for line in differences(previous.get(k), settings.get(k), k)[:8])
            raise StoreError(f"{self.uri} holds a {self.layout.kind} with different settings ({details}). Use a new "
                             "directory, or pass --allow-changes to continue it anyway (the store then records which "
                             "units were made with which settings)")
        history = previous.get(SETTINGS_HISTORY) or []
        if changed or not history:
            if all(h.get("settings") != settings_hash for h in history):
                history = [*history, entry]
            self._write_identity(identity, history)
        return settings_hash

    def _write_identity(self, identity: dict, history: list) -> None:
        self.write(self.layout.identity_file, json.dumps({**identity, SETTINGS_HISTORY: history}, indent=2).encode())
        owner = self.owner_record() or {"synth": __version__, "kind": self.layout.kind}
        self.write(OWNER_RECORD, json.dumps({**owner, "identity_sha256": canonical_hash(identity)}, indent=2).encode())

    def _repair_identity(self, identity: dict, entry: dict, log) -> dict:
        """The identity file is damaged: rewrite it if this launch's identity is the one the ownership
        record vouches for (its hash), else refuse."""
        owner = self.owner_record() or {}
        if owner.get("identity_sha256") != canonical_hash(identity):
            raise StoreError(f"{self.at(self.layout.identity_file).uri} is damaged and this launch's inputs and "
                             "settings are not the ones it recorded (or the record of them is lost too): synth "
                             "cannot tell what the store holds. Use a new directory (`synth verify` lists what is "
                             "intact).")
        log(f"synth: {self.layout.identity_file} was damaged; rewrote it from this launch, whose inputs and settings "
            "are the recorded ones (the record of earlier settings is lost)")
        self._write_identity(identity, [entry])
        return {**identity, SETTINGS_HISTORY: [entry]}

    # -- units ------------------------------------------------------------------------------

    def commit(self, unit: str, files: Sequence[FileRecord], meta: dict | None = None) -> Marker:
        """Commit a unit whose files are written: its marker, last, only while this command holds
        the lease. Committing a unit again (rewritten files) replaces its marker."""
        marker = Marker(unit, tuple(files), self.run_id, self.settings, dict(meta or {}))
        self.check_lease()
        self.write(marker_file(unit), marker.to_json())
        return marker

    def retract(self, unit: str) -> None:
        """Take back a unit's marker before its files are written again: until it is committed
        again, they are leftovers (a crash meanwhile can never leave the old marker over new bytes)."""
        self.check_lease()
        self.delete(marker_file(unit))

    def marker(self, unit: str) -> Marker | None:
        """A unit's marker; None if it has none. A damaged marker raises `Damaged`."""
        try:
            data = self.read(marker_file(unit))
        except FileNotFoundError:
            return None
        return parse(unit, data, self.layout.is_unit_file)

    def markers(self) -> dict[str, Marker | Damaged]:
        """Every unit with a marker (one listing): its marker, or why it cannot be trusted."""
        found: dict[str, Marker | Damaged] = {}
        for path in sorted(self.file_sizes(PROGRESS_DIR)):
            unit = marked_unit(path)
            if unit is None:
                continue
            try:
                found[unit] = parse(unit, self.read(path), self.layout.is_unit_file)
            except Damaged as e:
                found[unit] = e
            except (OSError, pa.ArrowException) as e:
                found[unit] = Damaged(f"cannot be read ({describe_os_error(e)})")
        return found

    def read_verified(self, unit: str, relative: str) -> bytes | None:
        """A committed file's bytes if they are what its unit's marker recorded; None when the unit
        has no (sound) marker, lists no such file, or the bytes differ (tampered, cut short)."""
        try:
            marker = self.marker(unit)
        except Damaged:
            return None
        record = marker.file(relative) if marker is not None else None
        if record is None:
            return None
        try:
            data = self.read(relative)
        except FileNotFoundError:
            return None
        return data if FileRecord.of(relative, data) == record else None

    # -- the lease --------------------------------------------------------------------------

    def lease_holder(self) -> dict | None:
        """The lease record of the command writing the store now; None if there is none or it cannot be read."""
        try:
            record = json.loads(self.read(LEASE_FILE).decode("utf-8"))
        except (OSError, pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return record if isinstance(record, dict) else None

    def check_lease(self) -> None:
        """Raise LeaseLost unless this command (`run_id`) holds the store's lease (no-op without a run id)."""
        if self.run_id is None:
            return
        holder = self.lease_holder()
        if holder is None or holder.get("run_id") != self.run_id:
            who = f"run {holder.get('run_id')} on {holder.get('host')}" if holder else "no run"
            raise LeaseLost(f"{self.uri}: this run ({self.run_id}) no longer holds the output's lease ({who} does); "
                            "it stops without committing more")

    # -- moving aside and deleting: the kind's own names only --------------------------------

    def quarantine(self, paths: Iterable[str], batch: str) -> list[str]:
        """Move files (the kind's names only) to `_quarantine/<batch>/`; returns where they went.
        Files that are already gone are skipped."""
        moved = []
        for path in dict.fromkeys(paths):
            self._own(path)
            destination = f"{QUARANTINE_DIR}/{batch}/{path}"
            try:
                storage.move(self.at(path), self.at(destination))
            except FileNotFoundError:
                continue
            except (OSError, pa.ArrowException) as e:
                raise OutputWriteError(f"cannot move {self.at(path).uri} aside: {describe_os_error(e)}") from None
            moved.append(destination)
        return moved

    def withdraw(self, unit: str, batch: str, marker: Marker | None = None) -> list[str]:
        """Quarantine a unit: its marker and the files it lists (to redo it); returns where they went."""
        files = [f.path for f in marker.files] if marker is not None else []
        moved = self.quarantine([marker_file(unit), *files], batch)
        crash_point("store-withdrawn")
        return moved

    def delete(self, relative: str) -> None:
        """Delete one file: a unit file no marker lists, or a temp file of the kind's names."""
        self._own(relative)
        try:
            self.location.fs.delete_file(self.at(relative).path)
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as e:
            raise OutputWriteError(f"cannot delete {self.at(relative).uri}: {describe_os_error(e)}") from None
