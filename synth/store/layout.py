"""What a store kind is made of: the store's own records, and the names a kind adds to them.

Every store, whatever writes it, holds the same records of its own:

    STORE/_synth.json                  ownership: this directory is synth's, of which kind, since when
    STORE/_lease.json                  the lease of the command writing it now
    STORE/<identity file>              what the store is for: its inputs (fingerprinted) and settings
    STORE/_progress/<unit>.json        a unit's marker: each of its files with size and sha256, written last
    STORE/_quarantine/<batch>/...      files that failed verification, moved aside, never deleted

A `Layout` is one kind's part: its name (recorded in `_synth.json`), its identity file,
the pattern of the files its units commit (the only files recovery may delete, when no
marker lists them), its other records (written whole, never deleted), and the names of
anything else it writes (a tree another library manages, such as Ray Train's
checkpoints). Whether a path is the store's to touch is decided here and nowhere else.
It knows nothing about what the files hold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from synth.store import storage

OWNER_RECORD = "_synth.json"
LEASE_FILE = "_lease.json"
PROGRESS_DIR = "_progress"
QUARANTINE_DIR = "_quarantine"

UNIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")  # a unit's name: its marker's file stem
_MARKER = re.compile(rf"{PROGRESS_DIR}/({UNIT_NAME.pattern})\.json")
_STORE_RECORDS = re.compile(rf"{re.escape(OWNER_RECORD)}|{re.escape(LEASE_FILE)}|{QUARANTINE_DIR}/.+")


def marker_file(unit: str) -> str:
    """Where a unit's marker lives (relative to the store)."""
    if not UNIT_NAME.fullmatch(unit):
        raise ValueError(f"not a unit name: {unit!r}")
    return f"{PROGRESS_DIR}/{unit}.json"


def marked_unit(relative: str) -> str | None:
    """The unit a marker's path names; None for any other path."""
    match = _MARKER.fullmatch(relative)
    return match.group(1) if match else None


@dataclass(frozen=True)
class Layout:
    """One store kind's names; see the module docstring.

    kind: recorded in `_synth.json`; a store is only ever continued by its own kind.
    identity_file: where the store's identity is recorded.
    unit_files: regex (full match, relative path) of every file a unit may commit.
    records: other files the kind writes whole (run.json, the card...), never deleted.
    other: regex of paths the kind writes but neither commits nor deletes (another library's tree), or "".
    hashed: regex of unit files small enough to check by sha256 at every recovery (caches that
        condition output), or "".
    large_dirs: directories of many unit files (clips) that recovery does not list on an object
        store, where listing is costly (their files are then checked by `verify` only).
    adopt_option: the command-line flag that lets the kind write into a foreign directory, or None.
    card_file: a record never overwritten unless synth wrote it (checked by its writer), so an
        adopted directory may already hold one.
    """

    kind: str
    identity_file: str
    unit_files: str
    records: tuple[str, ...] = ()
    other: str = ""
    hashed: str = ""
    large_dirs: tuple[str, ...] = ()
    adopt_option: str | None = None
    card_file: str | None = None

    def is_unit_file(self, relative: str) -> bool:
        return re.fullmatch(self.unit_files, relative) is not None

    def is_hashed(self, relative: str) -> bool:
        return bool(self.hashed) and re.fullmatch(self.hashed, relative) is not None

    def owns(self, relative: str) -> bool:
        """Whether a path (relative, '/'-separated) is one this kind's store writes, or a temp file of one."""
        name = storage.temp_target(relative) or relative
        return (
            name == self.identity_file
            or name in self.records
            or _STORE_RECORDS.fullmatch(name) is not None
            or marked_unit(name) is not None
            or self.is_unit_file(name)
            or (bool(self.other) and re.fullmatch(self.other, name) is not None)
        )
