"""An export as a job: source parts fanned out as Ray tasks, each committed as a unit of the export's store.

This module owns `run_export` (the driver: open the source dataset, claim the export store,
take its lease, record or check what is exported (a rerun must ask for the same export),
recover what an unfinished export left, make again the parts whose source part changed
since, hand every committed source part not yet exported to a Ray task, at most
`num_workers` at once, then commit the NeMo manifests and write `export.json` and the
export's card, `synth.export.card.write_export_card`) and `export_part` (the task: read one
part with the filters, one pass per split, write its files through the format's module,
commit its marker under the lease). Ray is found as a run finds it
(`synth.pipeline.runner.init_ray`). The formats' contents are `lhotse_shar`'s, `nemo`'s
and `webdataset`'s; the names are `synth.export.destination`'s, the protocol `synth.store`'s.
"""

from __future__ import annotations

import time
from collections import Counter

from synth.export import lhotse_shar, nemo, webdataset
from synth.export.card import write_export_card
from synth.export.destination import (
    EXPORT,
    EXPORT_RECORD,
    NEMO_MANIFEST_UNIT,
    UnitCommit,
    accept_unit,
    nemo_manifest,
    split_dir,
)
from synth.export.options import ExportOptions
from synth.export.rows import (
    ExportError,
    SourcePart,
    check_filters,
    committed_parts,
    read_rows,
)
from synth.pipeline.output import dataset_store
from synth.store.errors import StopRun
from synth.store.faults import actor_runtime_env, crash_point
from synth.store.lease import Lease
from synth.store.recovery import Verification, recover, verify
from synth.store.store import Store


def export_part(options_dict: dict, source_uri: str, dest_uri: str, part: SourcePart, run_id: str,
                settings: str) -> UnitCommit:
    """Export one source part into EXPORT and commit it (its marker last); runs as a Ray task."""
    options = ExportOptions.model_validate(options_dict)
    source = dataset_store(source_uri, "synth export")
    dest = Store.at_uri(dest_uri, EXPORT, run_id=run_id, settings=settings)
    files = []

    def put(path: str, data: bytes) -> None:
        files.append(dest.write(path, data))

    dropped: Counter = Counter()
    count, seconds, splits = 0, 0.0, {}
    for split in options.split_names if options.splits else (None,):  # a pass over the part per split
        rows = read_rows(source, part, options, dropped, split)
        if options.format == "lhotse_shar":
            n, s = lhotse_shar.write_part(rows, part, put, split_dir("shar", split))
        elif options.format == "nemo":
            n, s = nemo.write_part(rows, part, put, f"{split_dir('nemo/manifests', split)}/{part.name}.jsonl")
        else:
            n, s = webdataset.write_part(rows, part, put, shard_max_mb=options.shard_max_mb,
                                         directory=split_dir("wds", split))
        count, seconds = count + n, seconds + s
        if split is not None:
            splits[split] = n
    crash_point("export-part-files")  # the torn unit: its files written, its marker not
    commit = UnitCommit(part.shard, part.part, count, seconds, dict(dropped), part.data_sha256, splits)
    marker = dest.commit(part.name, files, commit.meta())
    return UnitCommit.from_marker(marker)


def _overlap(source: Store, dest: Store) -> None:
    src, dst = source.location.path.rstrip("/") + "/", dest.location.path.rstrip("/") + "/"
    if src.startswith(dst) or dst.startswith(src):
        raise ExportError(f"the export directory {dest.uri} and the output {source.uri} overlap: "
                          "export into a separate directory")


def run_export(source_uri: str, dest_uri: str, options: ExportOptions, *, log=print) -> dict:
    """Export the committed parts of `source_uri` into `dest_uri`; returns what export.json records."""
    t_start = time.time()
    source = dataset_store(source_uri, "synth export")
    parts = committed_parts(source)
    check_filters(options, source, parts)
    dest = Store.at_uri(dest_uri, EXPORT)
    _overlap(source, dest)
    dest.claim()
    identity = options.identity(source.location.path)  # absolute: `out` and `./out` are one source
    with Lease.acquire(dest, stale_after_s=options.lease_stale_seconds, log=log) as lease:
        dest.run_id = lease.run_id
        fixed = {k: f"it holds an export with another `{k}`" for k in identity}
        dest.settings = dest.record_identity(identity, fixed=fixed)
        dest.write_record(EXPORT_RECORD, {"identity": identity, "finished": False})  # until it is
        commits = _recover(dest, parts, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start)) + f"-{lease.run_id}",
                           log)
        todo = [p for p in parts if (p.shard, p.part) not in commits]
        log(f"synth export: {len(parts)} committed part(s) in {source.uri}, {len(parts) - len(todo)} already "
            f"exported, {len(todo)} to export as {options.format}")
        failed = _fan_out(options, source.uri, dest, todo, lease, commits, log) if todo else {}
        return _finish(dest, options, identity, parts, commits, failed, time.time() - t_start, log)


def _recover(dest: Store, parts: list[SourcePart], batch: str, log) -> dict[tuple[int, int], UnitCommit]:
    """The exported parts that can be trusted and still match their source part; the rest (damaged,
    torn, or made from a source part that was made again since) is put aside to export again."""
    found = recover(dest, batch=batch, accept=accept_unit)
    if found.removed:
        log(f"synth export: removed {len(found.removed)} file(s) an unfinished export left")
    for finding in found.findings:
        log(f"synth export: VERIFY FAILED: {finding} (put aside in _quarantine/{batch}; exported again)")
    sources = {(p.shard, p.part): p.data_sha256 for p in parts}
    commits = {}
    for unit, marker in found.units.items():
        if unit == NEMO_MANIFEST_UNIT:
            continue
        commit = UnitCommit.from_marker(marker)
        key = (commit.shard, commit.part)
        if sources.get(key) != commit.source_sha256:
            dest.withdraw(unit, batch, marker)
            log(f"synth export: {unit}: its source part changed since it was exported (or is gone): exported again")
            continue
        commits[key] = commit
    return commits


def _fan_out(options: ExportOptions, source_uri: str, dest: Store, todo: list[SourcePart], lease: Lease,
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
            ref = task.remote(options.model_dump(), source_uri, dest.uri, part, lease.run_id, dest.settings)
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


def _finish(dest: Store, options: ExportOptions, identity: dict, parts: list[SourcePart], commits: dict,
            failed: dict, wall_s: float, log) -> dict:
    """The NeMo manifests (every committed part's lines, in order, per split), export.json and the card."""
    ordered = [commits[key] for key in sorted(commits)]
    if options.format == "nemo":
        dest.retract(NEMO_MANIFEST_UNIT)
        manifests = []
        for split in options.split_names if options.splits else (None,):
            lines = f"{split_dir('nemo/manifests', split)}/"
            pieces = [r.path for c in ordered for r in c.files if r.path.rsplit("/", 1)[0] + "/" == lines]
            manifests.append(dest.write_stream(nemo_manifest(split), (dest.read(p) for p in pieces)))
        dest.commit(NEMO_MANIFEST_UNIT, manifests)
    dropped, by_split = Counter(), Counter()
    for commit in ordered:
        dropped.update(commit.dropped)
        by_split.update(commit.splits)
    units = [p.name for p in parts] + ([NEMO_MANIFEST_UNIT] if options.format == "nemo" else [])
    record = {
        "identity": identity,
        "finished": not failed and len(commits) >= len(parts),
        "units": units,  # what a finished export holds: every committed source part (`synth verify` checks it)
        "source_parts": len(parts),
        "parts_exported": len(commits),
        "parts_failed": failed,
        "rows": sum(c.rows for c in ordered),
        "audio_seconds": sum(c.audio_seconds for c in ordered),
        "dropped": dict(dropped),
        **({"splits": {name: by_split.get(name, 0) for name in options.split_names}} if options.splits else {}),
        "wall_seconds": wall_s,
    }
    dest.write_record(EXPORT_RECORD, record)
    write_export_card(dest, options, record)
    log(f"synth export: done: {record['rows']} row(s), {record['audio_seconds']:.1f} s audio, dropped "
        f"{dict(dropped) or 'none'}, {len(failed)} failed part(s) -> {dest.uri}")
    return record


def verify_export_at(uri: str, *, checksums: bool = True) -> Verification:
    """`synth verify` of an export: every unit against its marker and, once `export.json` lists what
    it holds, every one of those units committed."""
    store = Store.at_uri(uri, EXPORT)
    store.open_existing({"export"}, "synth verify")
    record = store.read_record(EXPORT_RECORD) or {}
    report, _ = verify(store, expected=record.get("units"), checksums=checksums, accept=accept_unit)
    return report
