"""The output directory: every name in it, the commit protocol, clean-up and the run record.

    OUT/data/shard-00003-part-0001.parquet     one row per generated turn
    OUT/errors/shard-00003-part-0001.parquet   one row per bad manifest row or turn
    OUT/wav/00003/<script>-<turn>.wav           the same audio as files (optional; or flac/)
    OUT/_voices/<content hash>.npy             the voice library's codes, encoded once per run
    OUT/_progress/shard-00003-part-0001.json   a part's commit marker (its `PartCommit`), written last
    OUT/_progress/shard-00003.done.json        a shard's done marker (its `ShardSummary`), after its parts
    OUT/plan.json                              the run's identity: its plan and the settings that shape output
    OUT/run.json                               the run's summary

Every name is a pure function of the shard and part (the plan fixes both), every file is
written atomically (`storage.write_bytes_atomic`), and a part counts as committed only
once its marker exists, so a crashed part is simply redone over the same names and
`OutputDir.remove_uncommitted` deletes what it half-wrote. A run takes OUT through
`OutputDir.prepare`, which checks that a relaunch continues the run recorded in
plan.json. This module knows nothing about Parquet schemas (`synth.pipeline.writer`
turns rows into bytes), models or Ray.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from synth.errors import SynthError
from synth.pipeline import storage
from synth.pipeline.config import SynthConfig
from synth.pipeline.plan import Plan

# -- the layout: paths relative to OUT ------------------------------------------------

DATA_DIR = "data"
ERRORS_DIR = "errors"
PROGRESS_DIR = "_progress"
VOICES_DIR = "_voices"
AUDIO_DIRS = ("wav", "flac")  # one per output.audio_format
PLAN_RECORD = "plan.json"
RUN_RECORD = "run.json"

PART_MARKER = re.compile(r"shard-(\d{5,})-part-(\d{4,})\.json")  # a part marker's file name: (shard, part)
SHARD_MARKER = re.compile(r"shard-(\d{5,})\.done\.json")  # a shard done marker's file name: (shard,)


def part_name(shard: int, part: int) -> str:
    """The stem shared by a part's data file, errors file and marker."""
    return f"shard-{shard:05d}-part-{part:04d}"


def data_file(shard: int, part: int) -> str:
    return f"{DATA_DIR}/{part_name(shard, part)}.parquet"


def errors_file(shard: int, part: int) -> str:
    return f"{ERRORS_DIR}/{part_name(shard, part)}.parquet"


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


def _file_name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


# -- what markers hold ----------------------------------------------------------------


@dataclass(frozen=True)
class PartCommit:
    """What a committed part holds; stored in its marker."""

    shard: int
    part: int
    rows: int
    errors: int
    audio_seconds: float
    scripts: int
    error_scripts: int

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class PartFiles:
    """A part's files as bytes, ready to commit; `commit` is what its marker will hold."""

    commit: PartCommit
    data: bytes | None  # data/<part>.parquet; None when the part has no rows
    errors: bytes | None  # errors/<part>.parquet; None when it has no error rows
    audio: tuple[tuple[str, bytes], ...] = ()  # (path under OUT, bytes) of each clip file


@dataclass(frozen=True)
class ShardSummary:
    """What a done shard holds (the sum of its parts); stored in its done marker."""

    shard: int
    rows: int
    errors: int
    error_scripts: int
    scripts: int
    audio_seconds: float
    voice_encodes: int = 0  # voices the shard's actor had to encode: 0 unless OUT/_voices lacked one

    @classmethod
    def of(cls, shard: int, commits: Iterable[PartCommit], voice_encodes: int) -> "ShardSummary":
        commits = list(commits)
        return cls(
            shard=shard,
            rows=sum(c.rows for c in commits),
            errors=sum(c.errors for c in commits),
            error_scripts=sum(c.error_scripts for c in commits),
            scripts=sum(c.scripts for c in commits),
            audio_seconds=sum(c.audio_seconds for c in commits),
            voice_encodes=voice_encodes,
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# -- the run record -------------------------------------------------------------------


class OutputError(SynthError, RuntimeError):
    """OUT cannot take this run (it holds another plan, or other settings); the message says why."""


def run_identity(config: SynthConfig, plan: Plan) -> dict:
    """What must not change between a run and its relaunch on the same output (plan.json)."""
    return {
        "model": config.model.resolved_id,
        "engine": config.model.engine,
        "dtype": config.model.dtype,
        "sampling": config.sampling.model_dump(),
        "generation": config.generation.model_dump(exclude={"batch_size"}),
        "output": config.output.model_dump(),
        "voices": {name: voice.model_dump() for name, voice in config.voices.items()},
        "plan": plan.to_dict(),
    }


# -- the directory --------------------------------------------------------------------


class OutputDir:
    """One run's output directory; see the module docstring."""

    def __init__(self, location: storage.Location):
        self.location = location

    @property
    def uri(self) -> str:
        return self.location.uri

    def at(self, relative: str) -> storage.Location:
        """The location of a path relative to OUT (one of this module's names)."""
        return self.location.join(relative)

    def _listed(self, path: str) -> storage.Location:
        """A location for a path `storage.list_files` returned."""
        return storage.Location(self.location.fs, path, path)

    # -- committing ---------------------------------------------------------------------

    def commit_part(self, files: PartFiles) -> PartCommit:
        """Write a part's audio files, errors and data, then its marker (last)."""
        shard, part = files.commit.shard, files.commit.part
        for path, data in files.audio:
            storage.write_bytes_atomic(self.at(path), data)
        if files.errors is not None:
            storage.write_bytes_atomic(self.at(errors_file(shard, part)), files.errors)
        if files.data is not None:
            storage.write_bytes_atomic(self.at(data_file(shard, part)), files.data)
        storage.write_bytes_atomic(self.at(part_marker_file(shard, part)), files.commit.to_json().encode())
        return files.commit

    def commit_shard(self, summary: ShardSummary) -> None:
        """Mark a shard done; only once every one of its parts is committed."""
        storage.write_bytes_atomic(self.at(shard_marker_file(summary.shard)), summary.to_json().encode())

    # -- reading commits ----------------------------------------------------------------

    def is_committed(self, shard: int, part: int) -> bool:
        return storage.exists(self.at(part_marker_file(shard, part)))

    def read_commit(self, shard: int, part: int) -> PartCommit:
        return PartCommit(**json.loads(storage.read_bytes(self.at(part_marker_file(shard, part)))))

    def committed_parts(self, shards: set[int]) -> list[PartCommit]:
        """The commit records of every committed part of `shards` (one listing of OUT/_progress)."""
        if not shards:
            return []
        commits = []
        for path in storage.list_files(self.at(PROGRESS_DIR), ".json"):
            marked = marked_part(_file_name(path))
            if marked and marked[0] in shards:
                commits.append(PartCommit(**json.loads(storage.read_bytes(self._listed(path)))))
        return commits

    def done_shards(self, shards: Iterable[int]) -> dict[int, ShardSummary]:
        """shard -> its summary, for those of `shards` marked done (one listing, not a stat per shard)."""
        wanted = set(shards)
        done = {}
        for path in storage.list_files(self.at(PROGRESS_DIR), ".done.json"):
            match = SHARD_MARKER.fullmatch(_file_name(path))
            if match and int(match.group(1)) in wanted:
                done[int(match.group(1))] = ShardSummary(**json.loads(storage.read_bytes(self._listed(path))))
        return dict(sorted(done.items()))

    def data_files(self) -> list[str]:
        """Paths of the data parts (after a run, every one is committed)."""
        return storage.list_files(self.at(DATA_DIR), ".parquet")

    # -- clean-up -----------------------------------------------------------------------

    def remove_uncommitted(self) -> int:
        """Delete part files whose commit marker is missing, and leftover temp files, so that
        nothing a crash half-wrote is ever read as data; returns how many. Run only while no
        actor writes."""
        marked = [marked_part(_file_name(path)) for path in storage.list_files(self.at(PROGRESS_DIR), ".json")]
        committed = {part_name(*shard_part) for shard_part in marked if shard_part}
        removed = 0
        for sub in (DATA_DIR, ERRORS_DIR):
            for path in storage.list_files(self.at(sub)):
                name = _file_name(path)
                if storage.is_temp(name) or name.removesuffix(".parquet") not in committed:
                    self.location.fs.delete_file(path)
                    removed += 1
        temp_dirs = [PROGRESS_DIR]
        if self.location.is_local:  # object-store writes leave no temp objects; listing every clip there is costly
            temp_dirs += AUDIO_DIRS
        for sub in temp_dirs:
            for path in storage.list_files(self.at(sub)):
                if storage.is_temp(_file_name(path)):
                    self.location.fs.delete_file(path)
                    removed += 1
        return removed

    # -- the run record -----------------------------------------------------------------

    def prepare(self, config: SynthConfig, plan: Plan, *, allow_changes: bool) -> None:
        """Record the run's identity in OUT/plan.json, or check a relaunch against it: another
        plan is refused outright, other settings unless `allow_changes`."""
        record = self.at(PLAN_RECORD)
        identity = run_identity(config, plan)
        if storage.exists(record):
            previous = json.loads(storage.read_bytes(record))
            diffs = [k for k in identity if previous.get(k) != identity[k]]
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
        storage.makedirs(self.location)
        storage.write_bytes_atomic(record, json.dumps(identity, indent=2).encode())

    def recorded_plan(self) -> Plan | None:
        """The plan in OUT/plan.json, or None before the first run."""
        record = self.at(PLAN_RECORD)
        if not storage.exists(record):
            return None
        return Plan.from_dict(json.loads(storage.read_bytes(record))["plan"])

    def write_run_record(self, summary: dict) -> None:
        """The run's summary as OUT/run.json."""
        storage.write_bytes_atomic(self.at(RUN_RECORD), json.dumps(summary, indent=2).encode())
