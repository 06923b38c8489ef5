"""The output directory: who owns it, every name in it, the commit protocol and the run record.

    OUT/_synth.json                            ownership: this directory is a synth output
    OUT/_lease.json                            the lease of the run writing it now (`synth.pipeline.lease`)
    OUT/data/shard-00003-part-0001.parquet     one row per generated turn
    OUT/errors/shard-00003-part-0001.parquet   one row per bad manifest row or turn
    OUT/takes/shard-00003-part-0001.parquet    one row per rejected take of the part's turns (QC on)
    OUT/qc/<part or file stem>.parquet         metrics of an existing dataset (`synth rescore`)
    OUT/wav/00003/<script>-<turn>.wav           the same audio as files (optional; or flac/)
    OUT/_voices/<content hash>.npy             the voice library's codes, encoded once per run
    OUT/_progress/shard-00003-part-0001.json   a part's commit marker (its `PartCommit`), written last
    OUT/_progress/shard-00003.done.json        a shard's done marker (its `ShardSummary`), after its parts
    OUT/_quarantine/<when>/...                 files that failed verification, moved aside
    OUT/plan.json                              the run's identity: its plan and the settings that shape output
    OUT/run.json                               the run's summary
    OUT/README.md                              the dataset card (README.synth.md if README.md is the user's)
    OUT/report.html                            the run report

synth owns only what it wrote: a directory is synth's if it holds `_synth.json` (or,
from before that record existed, `plan.json`); `claim` refuses any other non-empty
directory unless the user adopts it, and nothing outside the names above (`is_synth_name`)
is ever deleted or moved. Every name is a pure function of the shard and part, every
file is written atomically, and a part counts as committed only once its marker exists;
the marker records each of the part's files with its size and sha256, so what a marker
says can be checked (`synth.pipeline.verify`). A write that fails because of the
output itself (a full disk, a denied permission, an unreachable store) raises
`OutputWriteError`, which stops the run instead of failing the shard. This module knows
nothing about Parquet schemas (`synth.pipeline.writer`), models or Ray.
"""

from __future__ import annotations

import errno
import hashlib
import json
import re
import socket
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

import pyarrow as pa

from synth import __version__
from synth.errors import SynthError
from synth.pipeline import storage
from synth.pipeline.config import SynthConfig
from synth.pipeline.faults import crash_point
from synth.pipeline.plan import Plan

# -- the layout: paths relative to OUT ------------------------------------------------

OWNER_RECORD = "_synth.json"
LEASE_FILE = "_lease.json"
DATA_DIR = "data"
ERRORS_DIR = "errors"
TAKES_DIR = "takes"
SCORES_DIR = "qc"
PROGRESS_DIR = "_progress"
VOICES_DIR = "_voices"
QUARANTINE_DIR = "_quarantine"
AUDIO_DIRS = ("wav", "flac")  # one per output.audio_format
PLAN_RECORD = "plan.json"
RUN_RECORD = "run.json"
CARD_FILE = "README.md"  # the dataset card (synth.export.card), rewritten only when synth wrote it
CARD_FILE_ASIDE = "README.synth.md"  # the card, when README.md is the user's own
REPORT_FILE = "report.html"  # the run report (synth.export.report)

PART_MARKER = re.compile(r"shard-(\d{5,})-part-(\d{4,})\.json")  # a part marker's file name: (shard, part)
SHARD_MARKER = re.compile(r"shard-(\d{5,})\.done\.json")  # a shard done marker's file name: (shard,)
# Every path under OUT that synth's layout generates (relative, '/'-separated).
_SYNTH_PATH = re.compile(
    rf"(?:{DATA_DIR}|{ERRORS_DIR}|{TAKES_DIR})/shard-\d{{5,}}-part-\d{{4,}}\.parquet"
    rf"|{SCORES_DIR}/[A-Za-z0-9._-]+\.parquet"
    rf"|{PROGRESS_DIR}/(?:shard-\d{{5,}}-part-\d{{4,}}\.json|shard-\d{{5,}}\.done\.json)"
    rf"|(?:{'|'.join(AUDIO_DIRS)})/\d{{5,}}/[A-Za-z0-9._-]+-\d{{3,}}\.(?:{'|'.join(AUDIO_DIRS)})"
    rf"|{VOICES_DIR}/[0-9a-f]{{64}}\.npy"
    rf"|{re.escape(OWNER_RECORD)}|{re.escape(LEASE_FILE)}|{re.escape(PLAN_RECORD)}|{re.escape(RUN_RECORD)}"
    rf"|{re.escape(CARD_FILE)}|{re.escape(CARD_FILE_ASIDE)}|{re.escape(REPORT_FILE)}"
)


def part_name(shard: int, part: int) -> str:
    """The stem shared by a part's data file, errors file and marker."""
    return f"shard-{shard:05d}-part-{part:04d}"


def data_file(shard: int, part: int) -> str:
    return f"{DATA_DIR}/{part_name(shard, part)}.parquet"


def errors_file(shard: int, part: int) -> str:
    return f"{ERRORS_DIR}/{part_name(shard, part)}.parquet"


def takes_file(shard: int, part: int) -> str:
    return f"{TAKES_DIR}/{part_name(shard, part)}.parquet"


def part_table_files(shard: int, part: int) -> tuple[str, str, str]:
    """Every Parquet file a part may commit: data, errors, rejected takes."""
    return data_file(shard, part), errors_file(shard, part), takes_file(shard, part)


def scores_file(stem: str) -> str:
    """Where `synth rescore` writes the metrics of one input file (by its stem: a part's name)."""
    return f"{SCORES_DIR}/{safe_name(stem)}.parquet"


def part_marker_file(shard: int, part: int) -> str:
    return f"{PROGRESS_DIR}/{part_name(shard, part)}.json"


def shard_marker_file(shard: int) -> str:
    return f"{PROGRESS_DIR}/shard-{shard:05d}.done.json"


def audio_file(shard: int, script_id: str, turn: int, audio_format: str) -> str:
    """A clip's file: deterministic, one per (script, turn); the row's `audio.path`."""
    return f"{audio_format}/{shard:05d}/{safe_name(script_id)}-{turn:03d}.{audio_format}"


def voice_codes_file(clip_key: str) -> str:
    """Where a voice reference's codes are cached, by the clip's content hash."""
    return f"{VOICES_DIR}/{clip_key}.npy"


def safe_name(script_id: str) -> str:
    """A filesystem-safe, collision-free file stem for a script id."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", script_id)[:80]
    if slug == script_id:
        return slug
    return f"{slug}-{hashlib.sha1(script_id.encode()).hexdigest()[:8]}"


def marked_part(file_name: str) -> tuple[int, int] | None:
    """(shard, part) of a part marker's file name; None for any other file (a temp file, a done marker)."""
    match = PART_MARKER.fullmatch(file_name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_synth_name(relative: str) -> bool:
    """Whether a path under OUT is one synth's layout generates, or a temp file of one."""
    name = storage.temp_target(relative) or relative
    return _SYNTH_PATH.fullmatch(name) is not None


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# -- what markers hold ----------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    """One file of a committed part, as its marker records it: path under OUT, bytes, sha256."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str, data: bytes) -> "FileRecord":
        return cls(path, len(data), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class PartCommit:
    """What a committed part holds; stored in its marker.

    files: every file of the part with its size and checksum; empty in markers written
    before synth recorded them (those parts are checked by their counts alone).
    qc: the part's QC totals (`synth.pipeline.retakes.QcCounts`); empty without QC."""

    shard: int
    part: int
    rows: int
    errors: int
    audio_seconds: float
    scripts: int
    error_scripts: int
    files: tuple[FileRecord, ...] = ()
    qc: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "PartCommit":
        return cls(**{**data, "files": tuple(FileRecord(**f) for f in data.get("files", ()))})


@dataclass(frozen=True)
class PartFiles:
    """A part's files as bytes, ready to commit; `commit` is what its marker will hold."""

    commit: PartCommit
    data: bytes | None  # data/<part>.parquet; None when the part has no rows
    errors: bytes | None  # errors/<part>.parquet; None when it has no error rows
    takes: bytes | None = None  # takes/<part>.parquet; None when no take was rejected
    audio: tuple[tuple[str, bytes], ...] = ()  # (path under OUT, bytes) of each clip file


@dataclass(frozen=True)
class ShardSummary:
    """What a done shard holds (the sum of its parts, and the parts' own records); stored in
    its done marker."""

    shard: int
    rows: int
    errors: int
    error_scripts: int
    scripts: int
    audio_seconds: float
    voice_encodes: int = 0  # voices the shard's actor had to encode: 0 unless OUT/_voices lacked one
    parts: tuple[PartCommit, ...] = field(default=(), repr=False)  # empty in markers from before they were listed

    @classmethod
    def of(cls, shard: int, commits: Iterable[PartCommit], voice_encodes: int = 0) -> "ShardSummary":
        commits = tuple(commits)
        return cls(
            shard=shard,
            rows=sum(c.rows for c in commits),
            errors=sum(c.errors for c in commits),
            error_scripts=sum(c.error_scripts for c in commits),
            scripts=sum(c.scripts for c in commits),
            audio_seconds=sum(c.audio_seconds for c in commits),
            voice_encodes=voice_encodes,
            parts=commits,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ShardSummary":
        return cls(**{**data, "parts": tuple(PartCommit.from_dict(p) for p in data.get("parts", ()))})


# -- errors ---------------------------------------------------------------------------

# errno values of a write that fails because of the output, not of what is written
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


class OutputError(SynthError, RuntimeError):
    """OUT cannot take this run (not synth's, another plan, other settings); the message says why."""


class StopRun(SynthError, RuntimeError):
    """Not the shard's fault: retrying it cannot help, so the run stops (a relaunch resumes)."""


class OutputWriteError(StopRun):
    """Writing to OUT failed because of OUT itself: no space, no permission, an unreachable store."""


class LeaseLost(StopRun):
    """Another run holds OUT's lease now: this run must write nothing more."""


# -- the run record -------------------------------------------------------------------

# The version of data/'s columns (`synth.pipeline.writer.output_features`): parts of two
# versions do not load as one dataset, so an output is only ever continued by its own.
# 1: before plan.json recorded it; 2: adds `warnings`; 3: adds `spoken_text`; 4: adds the QC columns
# (`qc_pass`, ...). Bump it with every column change.
DATA_SCHEMA = 4


def run_identity(config: SynthConfig, plan: Plan) -> dict:
    """What must not change between a run and its relaunch on the same output (plan.json)."""
    return {
        "data_schema": DATA_SCHEMA,
        "model": config.model.resolved_id,
        "engine": config.model.engine,
        "dtype": config.model.dtype,
        "sampling": config.sampling.model_dump(),
        "generation": config.generation.model_dump(exclude={"batch_size", "context_from"}),
        "context_from": config.context_from,
        "output": config.output.model_dump(),
        "voices": {name: voice.model_dump() for name, voice in config.voices.items()},
        "text": config.text.model_dump(),
        "qc": json.loads(json.dumps(asdict(config.qc))),  # as plan.json holds it (tuples are lists)
        "plan": plan.to_dict(),
    }


# -- the directory --------------------------------------------------------------------


class OutputDir:
    """One run's output directory; see the module docstring.

    run_id: the run this process writes for; when set, a part's marker is written only while
    that run holds OUT's lease (an actor of a run that lost it commits nothing more)."""

    def __init__(self, location: storage.Location, run_id: str | None = None):
        self.location = location
        self.run_id = run_id

    @property
    def uri(self) -> str:
        return self.location.uri

    def at(self, relative: str) -> storage.Location:
        """The location of a path relative to OUT (one of this module's names)."""
        return self.location.join(relative)

    def _listed(self, path: str) -> storage.Location:
        """A location for a path `storage.list_files` returned."""
        return storage.Location(self.location.fs, path, path)

    def write(self, relative: str, data: bytes) -> None:
        """Write a file under OUT atomically. A failure of OUT itself (no space, no permission, a
        read-only filesystem, an object store that refuses or cannot be reached) is an
        OutputWriteError; any other OSError (e.g. a directory where the file should go) stays
        the shard's own failure."""
        try:
            storage.write_bytes_atomic(self.at(relative), data)
        except (OSError, pa.ArrowException) as e:
            if self.location.is_local and getattr(e, "errno", None) not in OUTPUT_ERRNOS:
                raise
            raise OutputWriteError(f"cannot write {self.at(relative).uri}: {e}. Nothing committed is lost: "
                                   "fix the output (free space, permissions, the store's address or "
                                   "credentials), then run the same command again to resume.") from None

    def read_json(self, relative: str) -> dict:
        return json.loads(storage.read_bytes(self.at(relative)))

    # -- ownership ----------------------------------------------------------------------

    def claim(self, *, adopt: bool = False) -> None:
        """Make sure OUT is synth's to write: it is missing or empty (then it becomes synth's),
        or it holds synth's ownership record (or a plan.json from before that record). Any other
        directory is refused, naming what is in it, unless `adopt`: then synth writes its own
        names into it and never touches anything else."""
        loc = self.location
        if storage.exists(loc) and not storage.is_dir(loc):
            raise OutputError(f"--output {self.uri} is a file, not a directory: give a directory (new or synth's own)")
        present = storage.entries(loc)
        if OWNER_RECORD in present:
            return
        if present and PLAN_RECORD not in present and not adopt:
            shown = ", ".join(present[:8]) + (f" and {len(present) - 8} more" if len(present) > 8 else "")
            raise OutputError(
                f"--output {self.uri} is not empty and is not a synth output (it holds {shown}). synth writes "
                "only into a new or empty directory or one it made; use a new --output, or pass --adopt-output to "
                "let synth write into this one (it then deletes or moves only files named by its own layout)."
            )
        record = {"synth": __version__, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "host": socket.gethostname(), "adopted": bool(present) and PLAN_RECORD not in present,
                  "found": present[:100]}
        self.write(OWNER_RECORD, json.dumps(record, indent=2).encode())

    # -- committing ---------------------------------------------------------------------

    def commit_part(self, files: PartFiles) -> PartCommit:
        """Write a part's audio files, errors and data, then its marker (last), which records
        every file with its size and sha256."""
        shard, part = files.commit.shard, files.commit.part
        tables = [(errors_file(shard, part), files.errors)] if files.errors is not None else []
        if files.takes is not None:
            tables.append((takes_file(shard, part), files.takes))
        if files.data is not None:
            tables.append((data_file(shard, part), files.data))
        for path, data in files.audio:
            self.write(path, data)
        crash_point("commit-audio")
        for path, data in tables:
            self.write(path, data)
        crash_point("commit-data")  # the torn commit: the part's files are whole, its marker missing
        written = [*files.audio, *tables]
        commit = replace(files.commit, files=tuple(FileRecord.of(path, data) for path, data in written))
        self.check_lease()
        self.write(part_marker_file(shard, part), commit.to_json().encode())
        crash_point("commit-marker")
        return commit

    def commit_shard(self, summary: ShardSummary) -> None:
        """Mark a shard done; only once every one of its parts is committed."""
        self.check_lease()
        self.write(shard_marker_file(summary.shard), summary.to_json().encode())

    def lease_holder(self) -> dict | None:
        """The lease record of the run writing OUT now, or None."""
        try:
            return self.read_json(LEASE_FILE)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def check_lease(self) -> None:
        """Raise LeaseLost unless this process's run (`run_id`) holds OUT's lease (no-op without one)."""
        if self.run_id is None:
            return
        holder = self.lease_holder()
        if holder is None or holder.get("run_id") != self.run_id:
            who = f"run {holder.get('run_id')} on {holder.get('host')}" if holder else "no run"
            raise LeaseLost(f"{self.uri}: this run ({self.run_id}) no longer holds the output's lease ({who} does); "
                            "it stops without committing more")

    # -- reading commits ----------------------------------------------------------------

    def is_committed(self, shard: int, part: int) -> bool:
        return storage.exists(self.at(part_marker_file(shard, part)))

    def read_commit(self, shard: int, part: int) -> PartCommit:
        return PartCommit.from_dict(self.read_json(part_marker_file(shard, part)))

    def read_shard(self, shard: int) -> ShardSummary:
        return ShardSummary.from_dict(self.read_json(shard_marker_file(shard)))

    def markers(self) -> tuple[set[tuple[int, int]], set[int]]:
        """The committed parts (shard, part) and the done shards, by their markers' names (one listing)."""
        parts, shards = set(), set()
        for path in storage.list_files(self.at(PROGRESS_DIR), ".json"):
            name = _file_name(path)
            if (marked := marked_part(name)) is not None:
                parts.add(marked)
            elif (match := SHARD_MARKER.fullmatch(name)) is not None:
                shards.add(int(match.group(1)))
        return parts, shards

    def file_sizes(self, *subdirs: str) -> dict[str, int]:
        """Path under OUT -> size of every file below `subdirs` (one listing each)."""
        return {f"{sub}/{rel}": size for sub in subdirs for rel, size in storage.file_sizes(self.at(sub)).items()}

    def data_files(self) -> list[str]:
        """Paths of the data parts (after a run, every one is committed)."""
        return storage.list_files(self.at(DATA_DIR), ".parquet")

    # -- moving aside and deleting: synth's own names only --------------------------------

    def quarantine(self, paths: Iterable[str], batch: str) -> list[str]:
        """Move files (paths under OUT, synth's names only) to OUT/_quarantine/<batch>/; returns
        where they went (under OUT). Files that are already gone are skipped."""
        moved = []
        for path in paths:
            assert is_synth_name(path), path
            destination = f"{QUARANTINE_DIR}/{batch}/{path}"
            try:
                storage.move(self.at(path), self.at(destination))
            except FileNotFoundError:
                continue
            moved.append(destination)
        return moved

    def delete(self, path: str) -> None:
        """Delete one file under OUT: synth's names only (a part no marker covers, a temp file)."""
        assert is_synth_name(path), path
        self.location.fs.delete_file(self.at(path).path)

    # -- the run record -----------------------------------------------------------------

    def prepare(self, config: SynthConfig, plan: Plan, *, allow_changes: bool) -> None:
        """Record the run's identity in OUT/plan.json, or check a relaunch against it: another
        plan is refused outright, other settings unless `allow_changes`."""
        identity = run_identity(config, plan)
        if storage.exists(self.at(PLAN_RECORD)):
            previous = self.read_json(PLAN_RECORD)
            recorded_schema = previous.get("data_schema", 1)
            if recorded_schema != DATA_SCHEMA:
                raise OutputError(
                    f"{self.uri} was written with the data columns of another synth version (schema "
                    f"{recorded_schema}; this one writes schema {DATA_SCHEMA}): parts of both would not load as one "
                    "dataset, so it cannot be continued, not even with --allow-changes. Finish it with the synth "
                    "version that started it, or use a new --output."
                )
            context_from = previous.get("context_from", "audio")  # before it was recorded: always audio
            if context_from != identity["context_from"]:
                raise OutputError(
                    f"{self.uri} was generated with context from {context_from} (generation.context_from), this run "
                    f"would use {identity['context_from']}: its scripts' turns would be conditioned two ways in one "
                    "dataset, so it cannot be continued so, not even with --allow-changes. Set "
                    f"generation.context_from={context_from}, or use a new --output."
                )
            diffs = [k for k in identity if k != "context_from" and previous.get(k) != identity[k]]
            per_part = "commit_every_scripts"
            if previous.get("plan") != identity["plan"] or (
                previous.get("output", {}).get(per_part) != identity["output"][per_part]
            ):
                raise OutputError(
                    f"{self.uri} was planned differently (the manifest files, output.scripts_per_shard or "
                    f"output.commit_every_scripts changed): committed parts are numbered by that plan, so this "
                    "output cannot be continued with another one, not even with --allow-changes. Use a new --output."
                )
            if diffs and not allow_changes:
                details = "; ".join(
                    f"{k}: was {json.dumps(previous.get(k))[:200]}, now {json.dumps(identity[k])[:200]}"
                    for k in diffs
                )
                raise OutputError(
                    f"{self.uri} holds a run with different settings ({details}). Use a new --output, "
                    "or pass --allow-changes to continue it anyway."
                )
            if not diffs:
                return
        self.write(PLAN_RECORD, json.dumps(identity, indent=2).encode())

    def recorded_plan(self) -> Plan | None:
        """The plan in OUT/plan.json, or None before the first run."""
        if not storage.exists(self.at(PLAN_RECORD)):
            return None
        return Plan.from_dict(self.read_json(PLAN_RECORD)["plan"])

    def write_run_record(self, summary: dict) -> None:
        """The run's summary as OUT/run.json."""
        self.write(RUN_RECORD, json.dumps(summary, indent=2).encode())
