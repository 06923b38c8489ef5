"""What in an output directory can be trusted: commits checked against their markers.

This module owns two checks over a `synth.pipeline.output.OutputDir`:

- `recover`, at the start and the end of every run, under the run's lease: a shard
  counts as done only if every part the plan gives it is committed and its files match
  its marker (present, and of the recorded size: one listing, no reading); a part whose
  files do not match is quarantined (moved to `OUT/_quarantine/`, reported) so that it
  is generated again; part files (data, errors, rejected takes) that no marker covers (a
  crash between a part's data and its marker) and temp files of synth's own names are deleted. Nothing else in OUT
  is touched.
- `verify` (`synth verify OUT`): the same checks over the whole output, plus every
  file's sha256, every row id exactly once, each data part opening as the dataset's
  Parquet with its row count; it reports and changes nothing, and a file that is not one
  of synth's names (a user's, in an adopted directory) is no finding.

It knows nothing about Ray or the model.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from synth.pipeline import storage
from synth.pipeline.faults import crash_point
from synth.pipeline.output import (
    AUDIO_DIRS,
    DATA_DIR,
    ERRORS_DIR,
    PLAN_RECORD,
    PROGRESS_DIR,
    QUARANTINE_DIR,
    TAKES_DIR,
    VOICES_DIR,
    FileRecord,
    OutputDir,
    PartCommit,
    ShardSummary,
    data_file,
    errors_file,
    is_synth_name,
    part_marker_file,
    part_table_files,
    shard_marker_file,
)
from synth.pipeline.plan import Plan

PART_FILE_DIRS = (DATA_DIR, ERRORS_DIR, TAKES_DIR)  # a part's Parquet files (`part_table_files`)


def parts_of(plan: Plan, commit_every_scripts: int) -> dict[int, int]:
    """shard -> how many parts it commits (a pure function of the plan, as the part names are)."""
    return {s.index: math.ceil(s.num_scripts / commit_every_scripts) for s in plan.shards}


def mismatch(commit: PartCommit, sizes: dict[str, int], *, check_audio: bool) -> str | None:
    """Why a committed part's files do not match its marker, or None. sizes: path under OUT ->
    size, from a listing (audio files in it only when `check_audio`)."""
    if not commit.files:  # a marker from before files were recorded: check what its counts imply
        needed = ([data_file(commit.shard, commit.part)] if commit.rows else []) + (
            [errors_file(commit.shard, commit.part)] if commit.errors else [])
        missing = [path for path in needed if not sizes.get(path)]
        return f"{missing[0]} is missing" if missing else None
    for record in commit.files:
        if not check_audio and record.path.split("/", 1)[0] in AUDIO_DIRS:
            continue
        size = sizes.get(record.path)
        if size is None:
            return f"{record.path} is missing"
        if size != record.size:
            return f"{record.path} has {size} bytes, its marker says {record.size}"
    return None


def _part_paths(commit: PartCommit) -> list[str]:
    """Every file a part may have left, its marker last."""
    recorded = [record.path for record in commit.files]
    return recorded + [p for p in part_table_files(commit.shard, commit.part)
                       if p not in recorded] + [part_marker_file(commit.shard, commit.part)]


@dataclass
class Recovery:
    """What `recover` found and did."""

    done: dict[int, ShardSummary] = field(default_factory=dict)  # shards done, every part verified
    parts: dict[int, list[PartCommit]] = field(default_factory=dict)  # verified parts of shards not done
    findings: list[str] = field(default_factory=list)  # what failed verification, one line each
    quarantined: list[str] = field(default_factory=list)  # where those files went, under OUT
    removed: list[str] = field(default_factory=list)  # uncovered part files and temp files deleted


def recover(output: OutputDir, plan: Plan, commit_every_scripts: int, *, batch: str) -> Recovery:
    """Check every commit against its marker, quarantine what does not match, delete part files
    no marker covers and synth's temp files; run only while holding the lease and while no
    actor writes. batch: the quarantine sub-directory for this call (e.g. the run's start)."""
    expected = parts_of(plan, commit_every_scripts)
    check_audio = output.location.is_local  # listing every clip of an object store is costly
    # One listing of every directory recovery reads: sizes to check markers against, and the
    # leftovers to delete (audio on object stores is neither checked nor listed).
    sizes = output.file_sizes(*PART_FILE_DIRS, *(AUDIO_DIRS if check_audio else ()), PROGRESS_DIR, VOICES_DIR)
    committed, done_shards = output.markers()
    found = Recovery()
    suspect: list[str] = []  # files to quarantine
    for shard in sorted(done_shards & expected.keys()):
        summary = output.read_shard(shard)
        listed = {commit.part: commit for commit in summary.parts}
        problems = []
        for part in range(expected[shard]):
            if (shard, part) not in committed:
                problems.append(f"part {part}'s marker is missing")
                suspect += [p for p in part_table_files(shard, part) if p in sizes]
                continue
            commit = listed.get(part) or output.read_commit(shard, part)
            if (why := mismatch(commit, sizes, check_audio=check_audio)) is not None:
                problems.append(f"part {part}: {why}")
                suspect += _part_paths(commit)
                committed.discard((shard, part))
        if problems:
            found.findings.append(f"shard {shard} was marked done, but " + "; ".join(problems))
            suspect.append(shard_marker_file(shard))
        else:
            found.done[shard] = summary
    for shard, part in sorted(committed):
        if shard in found.done or shard not in expected:
            continue
        commit = output.read_commit(shard, part)
        if (why := mismatch(commit, sizes, check_audio=check_audio)) is not None:
            found.findings.append(f"shard {shard} part {part}: {why}")
            suspect += _part_paths(commit)
            committed.discard((shard, part))
        else:
            found.parts.setdefault(shard, []).append(commit)
    found.quarantined = output.quarantine(dict.fromkeys(suspect), batch)
    crash_point("recover-quarantined")
    moved = {path.removeprefix(f"{QUARANTINE_DIR}/{batch}/") for path in found.quarantined}
    found.removed = _remove_uncovered(output, committed, [path for path in sizes if path not in moved])
    return found


def _remove_uncovered(output: OutputDir, committed: set[tuple[int, int]], listed: list[str]) -> list[str]:
    """Delete, of the `listed` paths under OUT, part files no marker covers and temp files of
    synth's names; nothing else."""
    covered = {path for shard, part in committed for path in part_table_files(shard, part)}
    removed = []
    for path in listed:
        temp = storage.is_temp(path.rsplit("/", 1)[-1])
        uncovered_part = path.split("/", 1)[0] in PART_FILE_DIRS and path not in covered
        if is_synth_name(path) and (temp or uncovered_part):
            output.delete(path)
            crash_point("recover-removing")
            removed.append(path)
    return removed


# -- synth verify -------------------------------------------------------------------------


@dataclass
class Verification:
    """What `verify` checked and found."""

    parts: int = 0
    rows: int = 0
    bytes_hashed: int = 0
    findings: list[str] = field(default_factory=list)

    def render(self) -> str:
        head = (f"checked {self.parts} committed parts, {self.rows} rows, "
                f"{self.bytes_hashed / 2**20:.1f} MiB hashed")
        if not self.findings:
            return head + ": everything matches its marker"
        return "\n".join([head + f": {len(self.findings)} problem(s)", *(f"  {f}" for f in self.findings)])


def _hash_mismatch(output: OutputDir, record: FileRecord) -> str | None:
    import hashlib

    data = storage.read_bytes(output.at(record.path))
    if hashlib.sha256(data).hexdigest() != record.sha256:
        return f"{record.path}: its sha256 differs from its marker's"
    return None


def verify(output: OutputDir, *, checksums: bool = True) -> Verification:
    """Check a whole output against its markers without changing anything (see the module docstring)."""
    report = Verification()
    plan = output.recorded_plan()
    if plan is None:
        report.findings.append(f"{output.uri} holds no {PLAN_RECORD}: not a synth output, or no run started")
        return report
    per_part = output.read_json(PLAN_RECORD)["output"]["commit_every_scripts"]
    expected = parts_of(plan, per_part)
    sizes = output.file_sizes(*PART_FILE_DIRS, *AUDIO_DIRS)
    committed, done_shards = output.markers()
    for shard in sorted(done_shards):
        missing = [p for p in range(expected.get(shard, 0)) if (shard, p) not in committed]
        if missing:
            report.findings.append(f"shard {shard} is marked done but parts {missing} have no marker")
    ids: Counter[str] = Counter()
    covered = set()
    for shard, part in sorted(committed):
        commit = output.read_commit(shard, part)
        report.parts += 1
        covered.update(part_table_files(shard, part))
        if (why := mismatch(commit, sizes, check_audio=True)) is not None:
            report.findings.append(f"shard {shard} part {part}: {why}")
            continue
        for record in commit.files if checksums else ():
            report.bytes_hashed += record.size
            if (why := _hash_mismatch(output, record)) is not None:
                report.findings.append(f"shard {shard} part {part}: {why}")
        if commit.rows:
            report.findings += _check_data_part(output, commit, ids)
    report.rows = sum(ids.values())
    report.findings += [f"row id {key!r} appears {n} times" for key, n in ids.items() if n > 1]
    report.findings += [f"{path}: no marker covers it (a part that was never committed)" for path in sizes
                        if path.split("/", 1)[0] in PART_FILE_DIRS and path not in covered and is_synth_name(path)]
    return report


def _check_data_part(output: OutputDir, commit: PartCommit, ids: Counter) -> list[str]:
    """A data part opens as the dataset's Parquet (HF features in its metadata) with the marker's
    row count; its ids join `ids`."""
    path = data_file(commit.shard, commit.part)
    try:
        table = pq.read_table(output.location.fs.open_input_file(output.at(path).path), columns=["id"])
        metadata = pq.read_schema(output.location.fs.open_input_file(output.at(path).path)).metadata or {}
    except (pa.ArrowException, OSError) as e:
        return [f"{path}: does not open as Parquet ({e})"]
    problems = []
    if b"huggingface" not in metadata:
        problems.append(f"{path}: its schema lacks the `huggingface` features metadata `datasets` reads")
    if table.num_rows != commit.rows:
        problems.append(f"{path}: {table.num_rows} rows, its marker says {commit.rows}")
    ids.update(table.column("id").to_pylist())
    return problems
