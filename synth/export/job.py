"""An export as a job: source parts fanned out as Ray tasks, each committed like a run's part.

This module owns `run_export` (the driver: claim the export directory, take its lease,
check that a rerun asks for the same export, delete what an unfinished export left, hand
every committed source part not yet exported to a Ray task, at most `num_workers` at once,
then write the NeMo manifest and `export.json`) and `export_part` (the task: read one part
with the filters, write its files through the format's module, commit its marker under the
lease). Ray is found as a run finds it (`synth.pipeline.runner.init_ray`). The formats'
contents are `lhotse_shar`'s, `nemo`'s and `webdataset`'s; the names and markers are
`synth.export.destination`'s.
"""

from __future__ import annotations

import time
from collections import Counter

from synth.export import lhotse_shar, nemo, webdataset
from synth.export.destination import NEMO_MANIFEST, ExportDir, UnitCommit
from synth.export.options import ExportOptions
from synth.export.rows import (
    ExportError,
    SourcePart,
    check_filters,
    committed_parts,
    read_rows,
    source_columns,
)
from synth.pipeline import storage
from synth.pipeline.faults import actor_runtime_env, crash_point
from synth.pipeline.lease import Lease
from synth.pipeline.output import FileRecord, OutputDir, StopRun


def export_part(options_dict: dict, source_uri: str, dest_uri: str, part: SourcePart, run_id: str) -> UnitCommit:
    """Export one source part into EXPORT and commit it (its marker last); runs as a Ray task."""
    options = ExportOptions.model_validate(options_dict)
    source = OutputDir(storage.resolve(source_uri))
    dest = ExportDir(OutputDir(storage.resolve(dest_uri), run_id=run_id))
    files: list[FileRecord] = []

    def put(path: str, data: bytes) -> None:
        dest.output.write(path, data)
        files.append(FileRecord.of(path, data))

    dropped: Counter = Counter()
    rows = read_rows(source, part, options, dropped)
    if options.format == "lhotse_shar":
        count, seconds = lhotse_shar.write_part(rows, part, put)
    elif options.format == "nemo":
        count, seconds = nemo.write_part(rows, part, put)
    else:
        count, seconds = webdataset.write_part(rows, part, put, shard_max_mb=options.shard_max_mb)
    crash_point("export-part-files")  # the torn unit: its files written, its marker not
    commit = UnitCommit(part.shard, part.part, count, seconds, dict(dropped), tuple(files))
    dest.commit(commit)
    return commit


def run_export(source_uri: str, dest_uri: str, options: ExportOptions, *, log=print) -> dict:
    """Export the committed parts of `source_uri` into `dest_uri`; returns what export.json records."""
    t_start = time.time()
    source = OutputDir(storage.resolve(source_uri))
    parts = committed_parts(source)
    check_filters(options, source_columns(source, parts), source.uri)
    dest = ExportDir(OutputDir(storage.resolve(dest_uri)))
    dest.claim(source)
    identity = options.identity(source.location.path)  # absolute: `out` and `./out` are one source
    with Lease.acquire(dest.output, stale_after_s=options.lease_stale_seconds, log=log) as lease:
        dest.check_identity(identity)
        dest.write_record({"identity": identity, "finished": False})
        commits = dest.commits()
        removed = dest.remove_unfinished(commits)
        if removed:
            log(f"synth export: removed {len(removed)} file(s) an unfinished export left")
        todo = [p for p in parts if (p.shard, p.part) not in commits]
        log(f"synth export: {len(parts)} committed part(s) in {source.uri}, {len(parts) - len(todo)} already "
            f"exported, {len(todo)} to export as {options.format}")
        failed = _fan_out(options, source.uri, dest, todo, lease, commits, log) if todo else {}
        return _finish(dest, options, identity, parts, commits, failed, time.time() - t_start, log)


def _fan_out(options: ExportOptions, source_uri: str, dest: ExportDir, todo: list[SourcePart], lease: Lease,
             commits: dict, log) -> dict[str, str]:
    """Run `export_part` for every part of `todo` on Ray, `num_workers` at a time; returns the failed parts."""
    from synth.pipeline.runner import init_ray

    ray = init_ray(options.ray_address)
    from ray.exceptions import RayError

    # a worker that dies retries its part; runtime_env arms crash points in tests, as for a run's actors
    task = ray.remote(num_cpus=options.num_cpus, max_retries=2, runtime_env=actor_runtime_env())(export_part)
    queue, in_flight, failed = list(reversed(todo)), {}, {}
    while queue or in_flight:
        if lease.lost:
            raise ExportError(f"{dest.uri}: another export took over the lease; this one stops")
        while queue and len(in_flight) < options.num_workers:
            part = queue.pop()
            ref = task.remote(options.model_dump(), source_uri, dest.uri, part, lease.run_id)
            in_flight[ref] = part
        ended, _ = ray.wait(list(in_flight), num_returns=1)
        part = in_flight.pop(ended[0])
        try:
            commit = ray.get(ended[0])
        except RayError as e:  # the task raised, or its worker died past its retries: record the part, go on
            if isinstance(getattr(e, "cause", None), StopRun):  # a full disk, a lost lease: no part can succeed
                raise ExportError(f"the export stopped: {e.cause}") from None
            failed[part.name] = str(e).strip().splitlines()[-1][:500]
            log(f"synth export: part {part.name} FAILED: {failed[part.name]}")
            continue
        commits[(commit.shard, commit.part)] = commit
        crash_point("export-part-done")
        log(f"synth export: [{len(commits)}] {part.name}: {commit.rows} row(s), {commit.audio_seconds:.1f} s")
    return failed


def _finish(dest: ExportDir, options: ExportOptions, identity: dict, parts: list[SourcePart], commits: dict,
            failed: dict, wall_s: float, log) -> dict:
    """The NeMo manifest (every committed part's lines, in order) and export.json."""
    ordered = [commits[key] for key in sorted(commits)]
    if options.format == "nemo":
        pieces = [r.path for c in ordered for r in c.files if r.path.startswith("nemo/manifests/")]
        dest.write_streamed(NEMO_MANIFEST, (storage.read_bytes(dest.output.at(p)) for p in pieces))
    dropped = Counter()
    for commit in ordered:
        dropped.update(commit.dropped)
    record = {
        "identity": identity,
        "finished": not failed and len(commits) >= len(parts),
        "source_parts": len(parts),
        "parts_exported": len(commits),
        "parts_failed": failed,
        "rows": sum(c.rows for c in ordered),
        "audio_seconds": sum(c.audio_seconds for c in ordered),
        "dropped": dict(dropped),
        "wall_seconds": wall_s,
    }
    dest.write_record(record)
    log(f"synth export: done: {record['rows']} row(s), {record['audio_seconds']:.1f} s audio, dropped "
        f"{dict(dropped) or 'none'}, {len(failed)} failed part(s) -> {dest.uri}")
    return record
