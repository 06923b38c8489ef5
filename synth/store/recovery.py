"""What in a store can be trusted: units checked against their markers, the rest put aside.

This module owns the two checks every store gets, whatever its kind:

- `recover`, when a command starts (and, for a run, when it ends), under its lease: a
  unit counts only if its marker is sound, the kind accepts it (`accept`), and every file
  it lists is present with the recorded size (one listing, nothing read; files the layout
  marks as `hashed`, small caches that condition output, are also checked by sha256).
  A damaged marker, or a unit whose files do not match, is quarantined (moved to
  `_quarantine/<batch>/`, reported) so that the command makes the unit again; unit files
  no sound marker lists (a write cut short between a unit's files and its marker) and
  temp files of the kind's names are deleted. Nothing else is touched.
- `verify` (`synth verify`): the same over the whole store, every file's sha256 as well,
  and completeness: every unit the store's identity expects is committed. It reports and
  changes nothing.

The kinds add their own checks on top (a dataset's row ids once each, its parts opening
as Parquet). It knows nothing about what the units hold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from synth.store import storage
from synth.store.errors import StoreError, describe_os_error
from synth.store.faults import crash_point
from synth.store.layout import QUARANTINE_DIR, marker_file
from synth.store.marker import Damaged, Marker
from synth.store.store import Store

Accept = Callable[[Marker], "str | None"]  # the kind's check of a sound marker: None, or why it cannot be trusted
UNCOVERED = "no marker covers it"  # verify's finding for a unit file without a marker (a write cut short)


def listing(store: Store, *, skip_large: bool) -> dict[str, int]:
    """Path -> size of every file in the store but the quarantine; with `skip_large`, the
    layout's large directories are not listed (object stores, where listing them is costly)."""
    skipped = {QUARANTINE_DIR, *(store.layout.large_dirs if skip_large else ())}
    selector = pafs.FileSelector(store.location.path, recursive=False, allow_not_found=True)
    try:
        top = store.location.fs.get_file_info(selector)
    except (OSError, pa.ArrowException) as e:
        raise StoreError(f"cannot list {store.uri}: {describe_os_error(e)}") from None
    sizes = {}
    for info in top:
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if info.type == pafs.FileType.File:
            sizes[name] = info.size
        elif info.type == pafs.FileType.Directory and name not in skipped:
            sizes.update(store.file_sizes(name))
    return sizes


def mismatch(store: Store, marker: Marker, sizes: dict[str, int], *, listed_dirs_only: bool,
             checksums: bool) -> tuple[str | None, int]:
    """Why a unit's files do not match its marker (None if they do), and the bytes hashed to tell.
    Files in directories the listing skipped are not checked when `listed_dirs_only`."""
    hashed = 0
    for record in marker.files:
        if listed_dirs_only and record.path.split("/", 1)[0] in store.layout.large_dirs:
            continue
        size = sizes.get(record.path)
        if size is None:
            return f"{record.path} is missing", hashed
        if size != record.size:
            return f"{record.path} has {size} bytes, its marker says {record.size}", hashed
        if checksums or store.layout.is_hashed(record.path):
            try:
                data = store.read(record.path)
            except (OSError, pa.ArrowException) as e:
                return f"{record.path} cannot be read ({describe_os_error(e)})", hashed
            hashed += len(data)
            if hashlib.sha256(data).hexdigest() != record.sha256:
                return f"{record.path}: its sha256 differs from its marker's", hashed
    return None, hashed


@dataclass
class Recovery:
    """What `recover` found and did."""

    units: dict[str, Marker] = field(default_factory=dict)  # every unit that can be trusted
    findings: list[str] = field(default_factory=list)  # what failed verification, one line each
    quarantined: list[str] = field(default_factory=list)  # where those files went
    removed: list[str] = field(default_factory=list)  # unit files no marker lists, and temp files, deleted


def _trusted(store: Store, markers: dict[str, Marker | Damaged], sizes: dict[str, int], accept: Accept | None, *,
             listed_dirs_only: bool, checksums: bool) -> tuple[dict[str, Marker], list[tuple[str, str, list[str]]], int]:
    """The units that can be trusted, and (unit, why, its paths) of those that cannot; bytes hashed."""
    trusted, untrusted, hashed = {}, [], 0
    for unit, marker in markers.items():
        if isinstance(marker, Damaged):
            untrusted.append((unit, f"its marker is damaged: {marker}", [marker_file(unit)]))
            continue
        why = accept(marker) if accept is not None else None
        if why is None:
            why, read = mismatch(store, marker, sizes, listed_dirs_only=listed_dirs_only, checksums=checksums)
            hashed += read
        if why is not None:
            untrusted.append((unit, why, [marker_file(unit), *(f.path for f in marker.files)]))
        else:
            trusted[unit] = marker
    return trusted, untrusted, hashed


def _leftovers(store: Store, listed: set[str], paths: Iterable[str]) -> list[str]:
    """Of `paths`, the unit files not in `listed` (by markers) and the temp files of the kind's names."""
    return [path for path in paths if store.layout.owns(path) and (
        storage.is_temp(path.rsplit("/", 1)[-1]) or (store.layout.is_unit_file(path) and path not in listed))]


def recover(store: Store, *, batch: str, accept: Accept | None = None) -> Recovery:
    """Check every unit against its marker, quarantine what does not match, delete unit files no
    marker lists and temp files; run only under the store's lease while nothing else writes it.
    batch: the quarantine sub-directory for this call (e.g. the command's start and run id)."""
    skip_large = not store.location.is_local
    sizes = listing(store, skip_large=skip_large)
    found = Recovery()
    found.units, untrusted, _ = _trusted(store, store.markers(), sizes, accept, listed_dirs_only=skip_large,
                                         checksums=False)
    for unit, why, paths in untrusted:
        found.findings.append(f"{unit}: {why}")
        found.quarantined += store.quarantine(paths, batch)
    crash_point("recover-quarantined")
    moved = {path.removeprefix(f"{QUARANTINE_DIR}/{batch}/") for path in found.quarantined}
    listed = {f.path for marker in found.units.values() for f in marker.files}
    for path in _leftovers(store, listed, [p for p in sizes if p not in moved]):
        store.delete(path)
        crash_point("recover-removing")
        found.removed.append(path)
    return found


@dataclass
class Verification:
    """What `verify` checked and found."""

    units: int = 0
    rows: int = 0  # a dataset's rows (its kind's check fills it)
    bytes_hashed: int = 0
    findings: list[str] = field(default_factory=list)  # damage: each a line
    missing: list[str] = field(default_factory=list)  # units the store's identity expects that are not committed

    @property
    def ok(self) -> bool:
        return not self.findings and not self.missing

    def render(self) -> str:
        head = f"checked {self.units} committed units"
        head += f", {self.rows} rows" if self.rows else ""
        head += f", {self.bytes_hashed / 2**20:.1f} MiB hashed"
        if self.ok:
            return head + ": everything matches its marker, and nothing the store expects is missing"
        lines = [head + f": {len(self.findings)} problem(s)" + (f", {len(self.missing)} unit(s) missing"
                                                                    if self.missing else "")]
        lines += [f"  {f}" for f in self.findings]
        if self.missing:
            shown = ", ".join(self.missing[:10]) + (f" and {len(self.missing) - 10} more" if len(self.missing) > 10
                                                    else "")
            lines.append(f"  not committed (the command that writes the store has not finished them; run it again "
                         f"to finish): {shown}")
        return "\n".join(lines)


def verify(store: Store, *, expected: Iterable[str] | None = None, checksums: bool = True,
           accept: Accept | None = None) -> tuple[Verification, dict[str, Marker]]:
    """Check a whole store against its markers without changing anything (see the module docstring);
    also returns the units that can be trusted, for the kind's own checks."""
    report = Verification()
    sizes = listing(store, skip_large=False)
    markers = store.markers()
    trusted, untrusted, report.bytes_hashed = _trusted(store, markers, sizes, accept,
                                                       listed_dirs_only=False, checksums=checksums)
    report.units = len(trusted) + len(untrusted)
    report.findings += [f"{unit}: {why}" for unit, why, _ in untrusted]
    listed = {f.path for marker in markers.values() if isinstance(marker, Marker) for f in marker.files}
    report.findings += [f"{path}: {UNCOVERED} (a write cut short; the next launch removes it)"
                        for path in _leftovers(store, listed, sizes)]
    if expected is not None:
        report.missing = sorted(set(expected) - set(trusted))
    return report, trusted
