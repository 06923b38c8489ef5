"""The export directory: its names, its commit markers, its record, and what a killed export left.

    EXPORT/_synth.json                               ownership (as a run's OUT: `OutputDir.claim`)
    EXPORT/_lease.json                               the lease of the export writing it now
    EXPORT/export.json                               what was exported (source, format, filters) and the counts
    EXPORT/_progress/shard-00003-part-0001.json      a source part's commit marker, written last
    EXPORT/shar/{cuts,recording,codes}.shard-00003-part-0001.{jsonl.gz,tar}   Lhotse Shar
    EXPORT/nemo/audio/00003/<key>.{wav,flac}         NeMo: the clips
    EXPORT/nemo/manifests/shard-00003-part-0001.jsonl  NeMo: one part's lines
    EXPORT/nemo/manifest.jsonl                       NeMo: every committed part's lines, written at the end
    EXPORT/wds/shard-00003-part-0001-000.tar         WebDataset shards

One source part is one unit of work with the run's commit rules: its files are written
atomically under names that are a pure function of the part, then its marker records
each file with its size and sha256. A rerun skips the parts that have a marker and
deletes what an unfinished part left (files of these names that no marker lists, and
their temp files), so each row ends up exactly once. Nothing else is ever deleted: a
file that is not one of these names is the user's. It knows nothing about the formats'
contents or Ray.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

from synth.export.rows import ExportError
from synth.pipeline import storage
from synth.pipeline.output import (
    LEASE_FILE,
    OWNER_RECORD,
    PLAN_RECORD,
    PROGRESS_DIR,
    FileRecord,
    OutputDir,
)

EXPORT_RECORD = "export.json"
NEMO_MANIFEST = "nemo/manifest.jsonl"
_PART = r"shard-\d{5,}-part-\d{4,}"
_EXPORT_PATH = re.compile(
    rf"{PROGRESS_DIR}/{_PART}\.json"
    rf"|shar/(?:cuts|recording|codes)\.{_PART}\.(?:jsonl\.gz|tar)"
    rf"|nemo/audio/\d{{5,}}/[A-Za-z0-9_-]+\.(?:wav|flac)|nemo/manifests/{_PART}\.jsonl|{re.escape(NEMO_MANIFEST)}"
    rf"|wds/{_PART}-\d{{3,}}\.tar"
    rf"|{re.escape(EXPORT_RECORD)}|{re.escape(OWNER_RECORD)}|{re.escape(LEASE_FILE)}"
)
_RECORDS = (EXPORT_RECORD, OWNER_RECORD, LEASE_FILE, NEMO_MANIFEST)


def is_export_name(relative: str) -> bool:
    """Whether a path under EXPORT is one an export writes (or a temp file of one)."""
    name = storage.temp_target(relative) or relative
    return _EXPORT_PATH.fullmatch(name) is not None


def marker_file(part_name: str) -> str:
    return f"{PROGRESS_DIR}/{part_name}.json"


@dataclass(frozen=True)
class UnitCommit:
    """What one exported source part holds; stored in its marker."""

    shard: int
    part: int
    rows: int  # rows exported
    audio_seconds: float
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> rows it dropped
    files: tuple[FileRecord, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> "UnitCommit":
        return cls(**{**data, "files": tuple(FileRecord(**f) for f in data["files"])})


class ExportDir:
    """One export's destination; see the module docstring."""

    def __init__(self, output: OutputDir):
        self.output = output

    @property
    def uri(self) -> str:
        return self.output.uri

    def claim(self, source: OutputDir) -> None:
        """Make EXPORT synth's (new, empty, or an earlier export's); never a run's output, and
        never inside the source or around it (an export must not mix with a dataset's files)."""
        src, dst = source.location.path.rstrip("/") + "/", self.output.location.path.rstrip("/") + "/"
        if src.startswith(dst) or dst.startswith(src):
            raise ExportError(f"the export directory {self.uri} and the output {source.uri} overlap: "
                              "export into a separate directory")
        if storage.exists(self.output.at(PLAN_RECORD)):
            raise ExportError(f"{self.uri} is a synth run's output, not an export: export into a separate directory")
        self.output.claim()

    def check_identity(self, identity: dict) -> None:
        """Refuse to continue an export of another source, format or filters into this directory."""
        if not storage.exists(self.output.at(EXPORT_RECORD)):
            return
        previous = self.output.read_json(EXPORT_RECORD).get("identity")
        if previous != identity:
            diffs = [k for k in identity if (previous or {}).get(k) != identity[k]]
            raise ExportError(f"{self.uri} holds another export (it differs in {', '.join(diffs)}): "
                              "use a new export directory, or the same options to finish it")

    def commits(self) -> dict[tuple[int, int], UnitCommit]:
        """(shard, part) -> the commit of every exported part."""
        found = {}
        for path in storage.list_files(self.output.at(PROGRESS_DIR), ".json"):
            name = path.rsplit("/", 1)[-1]
            if re.fullmatch(rf"{_PART}\.json", name):
                commit = UnitCommit.from_dict(self.output.read_json(f"{PROGRESS_DIR}/{name}"))
                found[(commit.shard, commit.part)] = commit
        return found

    def remove_unfinished(self, commits: dict[tuple[int, int], UnitCommit]) -> list[str]:
        """Delete what a killed export left: files of the export's names that no marker lists
        (a part written but not committed; the final manifest, rewritten at the end), and temp
        files. Returns what was deleted."""
        kept = {record.path for commit in commits.values() for record in commit.files}
        kept |= {marker_file(f"shard-{s:05d}-part-{p:04d}") for s, p in commits}
        kept |= {r for r in _RECORDS if r != NEMO_MANIFEST}
        removed = []
        for relative in storage.file_sizes(self.output.location):
            if is_export_name(relative) and relative not in kept:
                self.output.location.fs.delete_file(self.output.at(relative).path)
                removed.append(relative)
        return removed

    def commit(self, commit: UnitCommit) -> None:
        """Write a part's marker (its files are written): only while this export holds the lease."""
        self.output.check_lease()
        self.output.write(marker_file(f"shard-{commit.shard:05d}-part-{commit.part:04d}"),
                          json.dumps(asdict(commit)).encode())

    def write_record(self, record: dict) -> None:
        self.output.write(EXPORT_RECORD, json.dumps(record, indent=2).encode())

    def write_streamed(self, relative: str, chunks) -> None:
        """Write a file from an iterable of byte chunks (memory: one chunk) to a temp name, then rename."""
        target = self.output.at(relative)
        temp = self.output.at(storage.temp_name(relative))
        storage.makedirs(self.output.at(relative.rsplit("/", 1)[0]))
        with temp.fs.open_output_stream(temp.path) as f:
            for chunk in chunks:
                f.write(chunk)
        storage.move(temp, target)
