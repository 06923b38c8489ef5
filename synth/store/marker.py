"""A unit's marker: what a committed unit holds, as the store records it, and reading it back.

A marker is `_progress/<unit>.json`, written after every file of its unit: each file with
its size and sha256, the run that committed it, the settings it was made with (a hash of
the store's changeable settings, see `synth.store.store.Store.record_identity`), and the
kind's own fields (a part's row counts, an exported part's source). `parse` turns the bytes
of a marker into a `Marker`, or says why they cannot be one (cut short, garbled, naming a
file the kind never commits): such a marker is damage, never trusted. It knows nothing
about what the files hold.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Callable

SHA256 = re.compile(r"[0-9a-f]{64}")
_GENERIC = ("unit", "files", "run_id", "settings")


@dataclass(frozen=True)
class FileRecord:
    """One file of a committed unit: path under the store, bytes, sha256."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> "FileRecord":
        return cls(path, len(data), hashlib.sha256(data).hexdigest())

    def to_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Marker:
    """A committed unit: its files, who committed it with which settings, and the kind's fields (`meta`)."""

    unit: str
    files: tuple[FileRecord, ...]
    run_id: str | None = None
    settings: str | None = None
    meta: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {"unit": self.unit, "files": [f.to_dict() for f in self.files], "run_id": self.run_id,
                "settings": self.settings, **self.meta}
        return json.dumps(data).encode()

    def file(self, path: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == path), None)


class Damaged(ValueError):
    """A marker that cannot be trusted; the message says why."""


def parse(unit: str, data: bytes, is_unit_file: Callable[[str], bool]) -> Marker:
    """The marker of `unit` from its bytes; raises Damaged (saying why) for anything else."""
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise Damaged(f"not a JSON marker ({e.__class__.__name__}: {str(e)[:80]}; {len(data)} bytes)") from None
    if not isinstance(record, dict):
        raise Damaged(f"holds a {type(record).__name__}, not a marker")
    if record.get("unit", unit) != unit:
        raise Damaged(f"names unit {record.get('unit')!r}, not {unit!r}")
    files = record.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        raise Damaged("lists no files")
    parsed = []
    for f in files:
        path, size, sha = f.get("path"), f.get("size"), f.get("sha256")
        if not (isinstance(path, str) and is_unit_file(path)):
            raise Damaged(f"lists {path!r}, which is not a file such a unit commits")
        if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
            raise Damaged(f"gives {path} a size of {size!r}")
        if not (isinstance(sha, str) and SHA256.fullmatch(sha)):
            raise Damaged(f"gives {path} a checksum of {sha!r}")
        parsed.append(FileRecord(path, size, sha))
    run_id, settings = record.get("run_id"), record.get("settings")
    if not all(v is None or isinstance(v, str) for v in (run_id, settings)):
        raise Damaged("has a run id or settings that are not strings")
    meta = {k: v for k, v in record.items() if k not in _GENERIC}
    return Marker(unit, tuple(parsed), run_id, settings, meta)
