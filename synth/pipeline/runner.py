"""The run: plan the manifest, take the output store, dispatch shards on Ray, summarise.

This module owns `run` (the driver's side of a run, start to end: plan the manifest with
every file fingerprinted, claim the output (a `synth.store` of kind `run`), take its lease,
refuse a relaunch on changed input (naming the file) or settings, recover what a killed
run left, dispatch, verify what was committed, write run.json), starting Ray (never
joining a cluster by accident) and checking that one actor fits it, and the thin loop
that makes the dispatcher's calls on Ray actors and turns their results and Ray's
exceptions into the dispatcher's events. What each event does is
`synth.pipeline.dispatcher`'s, what an actor does is `synth.pipeline.actor`'s, every name
in the output is `synth.pipeline.output`'s and the commit protocol is `synth.store`'s. It
holds no model math.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from synth.pipeline.actor import SynthActor
from synth.pipeline.config import SynthConfig
from synth.pipeline.dispatcher import Dispatcher, RunError, fmt_duration
from synth.pipeline.manifest import Manifest, check_unique_ids, open_manifest
from synth.pipeline.output import (
    FIXED,
    RUN,
    RUN_RECORD,
    VOICES_DIR,
    PartCommit,
    ShardSummary,
    accept_part,
    done_shards,
    parsed_part,
    run_identity,
    shard_parts,
)
from synth.pipeline.plan import Plan, Shard, changes, plan_shards
from synth.pipeline.progress_bar import ShardBar
from synth.pipeline.retakes import qc_totals
from synth.pipeline.spoken import spoken_text
from synth.store import storage
from synth.store.errors import StopRun, StoreError
from synth.store.faults import actor_runtime_env, crash_point
from synth.store.lease import Lease
from synth.store.recovery import Recovery, recover
from synth.store.store import Store


def input_fingerprints(config: SynthConfig) -> dict:
    """sha256 of each file besides the manifest that shapes every row: the voices' reference clips
    and the lexicon (null where one cannot be read: the run reports that itself)."""
    def sha(uri: str) -> str | None:
        try:
            return storage.sha256_of(storage.resolve(uri))[1]
        except (OSError, StoreError):
            return None
    found = {"voices": {name: sha(voice.audio) for name, voice in sorted(config.voices.items())}}
    if config.text.lexicon:
        found["lexicon"] = sha(config.text.lexicon)
    return found


def run(config: SynthConfig, input_uri: str, output_uri: str, *, allow_changes: bool = False, adopt: bool = False,
        store: Store | None = None, lease: Lease | None = None, log=print) -> dict:
    """Synthesize the whole manifest into `output_uri`; returns the run summary (run.json).

    The output must be a `run` store (or `adopt`ed, see `Store.claim`); the run holds its lease
    throughout. A caller that claimed the store and holds its lease already (a book render)
    passes both."""
    t_start = time.time()
    spoken_text(config.text)  # a lexicon that cannot be read stops the run here, not in every actor
    if config.qc.enabled:
        from synth.qc.deps import check_installed

        check_installed()  # before any actor loads: a missing extra is one clear error, not a failed shard
    manifest = open_manifest(input_uri)
    check_unique_ids(manifest)
    plan = plan_shards(manifest, config.output.scripts_per_shard, config.output.commit_every_scripts)
    inputs = input_fingerprints(config)
    if store is None:
        store = Store.at_uri(output_uri, RUN)
        store.claim(adopt=adopt)
    with contextlib.ExitStack() as stack:
        if lease is None:
            lease = stack.enter_context(Lease.acquire(store, stale_after_s=config.job.lease_stale_seconds, log=log))
        store.run_id = lease.run_id
        return _run_leased(config, manifest, plan, inputs, input_uri, store, lease, allow_changes=allow_changes,
                           t_start=t_start, log=log)


def check_plan(store: Store, plan: Plan) -> None:
    """Refuse a relaunch whose input or plan differs from the recorded one, naming each file and what
    changed (never allowed: committed parts are numbered by the plan and made from its rows)."""
    try:
        identity = store.identity()
    except StoreError:  # damaged: `Store.record_identity` rebuilds it if this launch is the recorded one
        return
    if identity is None or "plan" not in identity:
        return
    lines = changes(identity["plan"], plan)
    if lines:
        raise StoreError(f"{store.uri} was made from other input than this launch's, so it cannot be continued with "
                         "it, not even with --allow-changes (committed parts are numbered by the plan and made from "
                         "its rows):\n  " + "\n  ".join(lines) + "\nRestore the input it was made from, or use a "
                         "new --output.")


def _recover(store: Store, plan: Plan, batch: str, by_whom: str, log) -> tuple[Recovery, dict[tuple[int, int], PartCommit]]:
    """Recovery (`synth.store.recovery.recover`), logged; and the trusted parts of the plan."""
    found = recover(store, batch=batch, accept=accept_part)
    _report(found, by_whom, log)
    planned = {(s.index, p) for s in plan.shards for p in range(plan.parts_of(s))}
    parts = {}
    for unit, marker in found.units.items():
        key = parsed_part(unit)
        if key in planned:
            parts[key] = PartCommit.from_marker(marker)
    return found, parts


def _run_leased(config: SynthConfig, manifest: Manifest, plan: Plan, inputs: dict, input_uri: str, store: Store,
                lease: Lease, *, allow_changes: bool, t_start: float, log) -> dict:
    """The run once it holds the output's lease: check or record the identity, recover, dispatch,
    verify, summarise."""
    check_plan(store, plan)
    store.settings = store.record_identity(run_identity(config, plan, inputs), fixed=FIXED,
                                           allow_changes=allow_changes, log=log)
    batch = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t_start)) + f"-{lease.run_id}"
    _, parts = _recover(store, plan, batch, "an interrupted run", log)
    done = done_shards(plan, parts)
    todo = [s for s in plan.shards if s.index not in done]
    # what earlier runs committed, so that the speed reported is this run's own
    before = [*done.values(), *(c for s in todo for c in shard_parts(s, plan, parts))]
    log(
        f"synth: {manifest.num_rows} scripts in {len(plan.shards)} shards; "
        f"{len(done)} already done, {len(todo)} to run on {config.actors.num_actors} actor(s)"
    )

    failed: dict[int, str] = {}
    voices: dict = {}
    encoded_by_workers = 0
    if todo:
        dispatcher = _dispatch_on_ray(config, input_uri, plan, store, todo, done, lease, log=log)
        failed, voices = dispatcher.failed, dispatcher.voices
        encoded_by_workers = sum(dispatcher.done[s.index].voice_encodes for s in todo if s.index in dispatcher.done)

    # What this run committed, checked as a relaunch would check it: a part that does not match
    # its marker is quarantined now, its shard counted as failed, and a relaunch redoes it.
    crash_point("driver-final-recover")
    _, parts = _recover(store, plan, batch, "this run", log)
    done = done_shards(plan, parts)
    for shard in plan.shards:
        if shard.index not in done and shard.index not in failed:
            failed[shard.index] = "its committed files failed verification (quarantined; a relaunch redoes them)"
    # A failed shard keeps the parts it committed: they count as done, the rest as failed.
    salvaged = [commit for shard in plan.shards if shard.index in failed for commit in shard_parts(shard, plan, parts)]
    counted = [*done.values(), *salvaged]
    rows = sum(d.rows for d in counted)
    errors = sum(d.errors for d in counted)
    error_scripts = sum(d.error_scripts for d in counted)
    audio_s = sum(d.audio_seconds for d in counted)
    failed_scripts = sum(s.num_scripts for s in plan.shards if s.index in failed) - sum(c.scripts for c in salvaged)
    # QC totals (None without QC); a script whose kept take fails QC is a bad one only if asked
    qc = qc_totals([commit.qc for d in done.values() for commit in d.parts] + [c.qc for c in salvaged])
    qc_bad = qc["scripts_failing_qc"] if qc and config.qc.count_failures_as_errors else 0
    wall = time.time() - t_start
    rows_now = rows - sum(d.rows for d in before)
    audio_now = max(0.0, audio_s - sum(d.audio_seconds for d in before))
    bad_fraction = (error_scripts + failed_scripts + qc_bad) / max(1, manifest.num_rows)
    summary = {
        "input": input_uri,
        "output": store.uri,
        "run_id": lease.run_id,
        "settings": store.settings,
        "config": config.model_dump(),
        "scripts": manifest.num_rows,
        # scripts_ok + scripts_with_errors + scripts_in_failed_shards == scripts
        "scripts_ok": sum(d.scripts - d.error_scripts for d in counted),
        "shards": len(plan.shards),
        "shards_done": len(done),
        "shards_failed": {str(k): v for k, v in failed.items()},
        "turns_generated": rows,
        "error_rows": errors,
        "scripts_with_errors": error_scripts,
        "scripts_in_failed_shards": failed_scripts,
        # encoded: by the actor that prepared the voices; by_workers: by shards (0 when the cache works)
        "voices": {**voices, "encoded_by_workers": encoded_by_workers},
        "audio_seconds": audio_s,
        "audio_hours": audio_s / 3600,
        "wall_seconds": wall,
        # this run's own work (a relaunch skips what earlier runs committed); x_real_time is null when it did none
        "turns_generated_this_run": rows_now,
        "audio_seconds_this_run": audio_now,
        "x_real_time": audio_now / wall if rows_now else None,
        "qc": qc,
        "ok": not failed and bad_fraction <= config.job.max_error_rate,
    }
    crash_point("driver-run-record")
    store.write_record(RUN_RECORD, summary)
    if rows_now:
        this_run = f"this run: {rows_now} turns, {audio_now:.1f} s audio, {audio_now / wall:.2f}x real time"
    else:
        this_run = "no turns generated" if todo else "nothing to do"
    log(
        f"synth: done in {fmt_duration(wall)} ({this_run}); in all {rows} turns, {audio_s / 3600:.3f} h audio, "
        f"{errors} error rows, {len(failed)} failed shards"
        + (f", QC passed {qc['passed']}/{qc['turns']} turns in {qc['takes']} takes" if qc else "")
        + f" -> {store.uri}"
    )
    return summary


def _report(found: Recovery, by_whom: str, log) -> None:
    """Log what `recover` found: deleted leftovers, and parts that failed verification."""
    if found.removed:
        log(f"synth: removed {len(found.removed)} uncommitted file(s) left by {by_whom}")
    for finding in found.findings:
        log(f"synth: VERIFY FAILED: {finding}")
    if found.quarantined:
        where = found.quarantined[0].split("/")[:2]
        log(f"synth: moved {len(found.quarantined)} file(s) that do not match their markers to "
            f"{'/'.join(where)}/ (kept for inspection); their parts are generated again")


def _dispatch_on_ray(config: SynthConfig, input_uri: str, plan: Plan, store: Store, todo: list[Shard],
                     done: dict[int, ShardSummary], lease: Lease, *, log) -> Dispatcher:
    """Start the actors and hand them `todo` until every shard is done or failed; returns the
    dispatcher, which holds what happened (done, failed, voices)."""
    ray = init_ray(config.ray.address)
    _check_resources(ray, config)
    actor_cls = ray.remote(
        num_cpus=config.actors.num_cpus, num_gpus=config.actors.num_gpus, max_restarts=-1, max_task_retries=0,
        runtime_env=actor_runtime_env(),  # None unless a fault-injection test arms crash points
    )(SynthActor)
    files = [(f.name, f.num_rows) for f in plan.manifest_files]
    actors = [actor_cls.remote(config.model_dump(), input_uri, files, store.uri, store.layout.kind, lease.run_id,
                               store.settings)
              for _ in range(config.actors.num_actors)]
    bar = ShardBar(len(todo) + len(done), len(done), log)  # a live bar where stderr is a terminal
    dispatcher = Dispatcher(todo, num_actors=len(actors), max_shard_attempts=config.job.max_shard_attempts,
                            prepare_voices=bool(config.voices), done=done,
                            voices_uri=store.at(VOICES_DIR).uri, log=bar.log)
    try:
        _dispatch_loop(ray, dispatcher, actors, store, lease, bar)
    finally:
        bar.close()
    return dispatcher


def _dispatch_loop(ray, dispatcher: Dispatcher, actors: list, store: Store, lease: Lease, bar: ShardBar) -> None:
    """Make the dispatcher's calls on the actors and report how each ended, until it is finished."""
    from ray.exceptions import RayActorError, RayTaskError

    in_flight: dict = {}  # ObjectRef -> the dispatcher's Call it answers
    while not dispatcher.finished:
        if lease.lost:
            raise RunError(f"{store.uri}: another run took over this output's lease (see above); this run stops. "
                           "Only one run may write an output at a time.")
        for call in dispatcher.next_calls():
            method = getattr(actors[call.actor], call.method)
            in_flight[method.remote() if call.shard is None else method.remote(call.shard, call.attempt)] = call
        timeout = dispatcher.wait_timeout()
        if in_flight:
            ended, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
        else:  # every actor waits to be asked `ready` again
            time.sleep(timeout)
            ended = []
        if not ended:
            dispatcher.tick()
            continue
        call = in_flight.pop(ended[0])
        try:
            value = ray.get(ended[0])
        except RayActorError as e:  # its process died (Ray restarts it: max_restarts=-1), or never loaded
            dispatcher.died(call, str(e), init_failed=e.actor_init_failed)
        except RayTaskError as e:  # the call raised; the process lives on
            cause = getattr(e, "cause", None)
            if isinstance(cause, StopRun):  # not the shard's fault: a full disk, a lost lease...
                dispatcher.stopped(call, str(cause))
            dispatcher.raised(call, str(e))
        else:
            dispatcher.returned(call, value)
        progress = dispatcher.progress
        bar.update(len(dispatcher.done) + len(dispatcher.failed), progress.rows, progress.audio_seconds,
                   progress.x_real_time())
        crash_point("driver-result")
        sys.stdout.flush()


def init_ray(address: str | None):
    """Ray for the driver: already initialised, or `address` (ray.address), RAY_ADDRESS, else a new local one."""
    import ray

    if not ray.is_initialized():
        # Never join a cluster by accident (ray.init() with no address joins whatever
        # `ray start` last recorded on this machine): no address means a new local one.
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, log_to_driver=True, logging_level="warning")
    return ray


def _check_resources(ray, config: SynthConfig) -> None:
    total = ray.cluster_resources()
    need_cpu, need_gpu = config.actors.num_cpus, config.actors.num_gpus
    if total.get("CPU", 0) < need_cpu or total.get("GPU", 0) < need_gpu:
        raise RunError(
            f"the Ray cluster has {total.get('CPU', 0)} CPUs and {total.get('GPU', 0)} GPUs; one actor needs "
            f"{need_cpu} CPUs and {need_gpu} GPUs (actors.num_cpus / actors.num_gpus)"
        )
    fits = int(total.get("CPU", 0) // need_cpu)
    if need_gpu:
        fits = min(fits, int(total.get("GPU", 0) // need_gpu))
    if fits < config.actors.num_actors:
        print(
            f"warning: the cluster fits {fits} of the {config.actors.num_actors} actors asked for; "
            "the others wait for resources",
            flush=True,
        )
