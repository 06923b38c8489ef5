"""The Ray layer: a pool of actors, each holding one loaded model, working through the plan.

This module owns the driver's side of a run: planning (via `synth.pipeline.plan`), the output
directory's run record, starting actors with the configured resources, handing out
shards, retrying shards whose actor died, progress output, and the final summary in
`run.json`. It holds no model math: actors wrap `synth.pipeline.worker.ShardWorker`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections import deque

from synth.errors import SynthError
from synth.pipeline import storage
from synth.pipeline.config import SynthConfig
from synth.pipeline.manifest import check_unique_ids, open_manifest
from synth.pipeline.plan import Plan, Shard, plan_shards
from synth.pipeline.writer import committed_parts


class RunError(SynthError, RuntimeError):
    """The run cannot start or must stop; the message says why."""


def shard_done_marker(out: storage.Location, shard: int) -> storage.Location:
    return out.join("_progress", f"shard-{shard:05d}.done.json")


class SynthActor:
    """One model per process for the actor's whole life; `run_shard` does the work."""

    def __init__(self, config_dict: dict, input_uri: str, output_uri: str):
        import torch

        from synth.pipeline.worker import ShardWorker, load_engine

        config = SynthConfig.model_validate(config_dict)
        torch.set_num_threads(config.actors.torch_threads or max(1, math.ceil(config.actors.num_cpus)))
        self.engine = load_engine(config)
        self.out = storage.resolve(output_uri)
        manifest = open_manifest(input_uri)
        self.worker = ShardWorker(config, self.engine, manifest, self.out, log=lambda m: print(m, flush=True))

    def ready(self) -> dict:
        return {"pid": os.getpid(), **(self.engine.describe() if hasattr(self.engine, "describe") else {})}

    def prepare_voices(self) -> dict:
        """Encode every configured voice that OUT/_voices lacks (once per run, on one actor)."""
        return self.worker.voices.prepare()

    def run_shard(self, shard: dict) -> dict:
        s = Shard(**shard)
        encoded_before = self.worker.voices.encoded
        commits = self.worker.run_shard(s)
        summary = {
            "shard": s.index,
            "rows": sum(c.rows for c in commits),
            "errors": sum(c.errors for c in commits),
            "error_scripts": sum(c.error_scripts for c in commits),
            "scripts": sum(c.scripts for c in commits),
            "audio_seconds": sum(c.audio_seconds for c in commits),
            "voice_encodes": self.worker.voices.encoded - encoded_before,  # 0 unless OUT/_voices lacked one
        }
        storage.write_bytes_atomic(shard_done_marker(self.out, s.index), json.dumps(summary).encode())
        return summary


# -- planning and the run record -------------------------------------------------------


def remove_uncommitted(out: storage.Location) -> int:
    """Delete part files whose commit marker is missing, and leftover temp files, so that
    nothing a crash half-wrote is ever read as data. Run only while no actor writes."""
    committed = {
        path.rsplit("/", 1)[-1].removesuffix(".json")
        for path in storage.list_files(out.join("_progress"), ".json")
    }
    removed = 0
    for sub in ("data", "errors"):
        for path in storage.list_files(out.join(sub)):
            name = path.rsplit("/", 1)[-1]
            if ".tmp-" in name or name.removesuffix(".parquet") not in committed:
                out.fs.delete_file(path)
                removed += 1
    temp_dirs = ["_progress"]
    if out.is_local:  # object-store writes leave no temp objects; listing every clip there is costly
        temp_dirs += ["wav", "flac"]
    for sub in temp_dirs:
        for path in storage.list_files(out.join(sub)):
            if ".tmp-" in path.rsplit("/", 1)[-1]:
                out.fs.delete_file(path)
                removed += 1
    return removed


def _run_identity(config: SynthConfig, plan: Plan) -> dict:
    """What must not change between a run and its relaunch on the same output."""
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


def prepare_output(out: storage.Location, config: SynthConfig, plan: Plan, *, allow_changes: bool) -> None:
    """Record the run's identity in OUT/plan.json, or check a relaunch against it."""
    record = out.join("plan.json")
    identity = _run_identity(config, plan)
    if storage.exists(record):
        previous = json.loads(storage.read_bytes(record))
        diffs = [k for k in identity if previous.get(k) != identity[k]]
        per_part = "commit_every_scripts"
        if previous.get("plan") != identity["plan"] or (
            previous.get("output", {}).get(per_part) != identity["output"][per_part]
        ):
            raise RunError(
                f"{out.uri} was planned differently (the manifest files, output.scripts_per_shard or "
                f"output.commit_every_scripts changed): committed parts are numbered by that plan, so this "
                "output cannot be continued with another one, not even with --allow-changes. Use a new --output."
            )
        if diffs and not allow_changes:
            details = "; ".join(
                f"{k}: was {json.dumps(previous.get(k))[:200]}, now {json.dumps(identity[k])[:200]}"
                for k in diffs
            )
            raise RunError(
                f"{out.uri} holds a run with different settings ({details}). Use a new --output, "
                "or pass --allow-changes to continue it anyway."
            )
        if not diffs:
            return
    storage.makedirs(out)
    storage.write_bytes_atomic(record, json.dumps(identity, indent=2).encode())


# -- the run --------------------------------------------------------------------------


def _init_ray(config: SynthConfig):
    import ray

    if not ray.is_initialized():
        # Never join a cluster by accident (ray.init() with no address joins whatever
        # `ray start` last recorded on this machine): no address means a new local one.
        address = config.ray.address or os.environ.get("RAY_ADDRESS") or "local"
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


def _fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s"
    )


def run(config: SynthConfig, input_uri: str, output_uri: str, *, allow_changes: bool = False, log=print) -> dict:
    """Synthesize the whole manifest into `output_uri`; returns the run summary (run.json)."""
    t_start = time.time()
    manifest = open_manifest(input_uri)
    check_unique_ids(manifest)
    plan = plan_shards(manifest, config.output.scripts_per_shard)
    out = storage.resolve(output_uri)
    prepare_output(out, config, plan, allow_changes=allow_changes)
    removed = remove_uncommitted(out)
    if removed:
        log(f"synth: removed {removed} uncommitted file(s) left by an interrupted run")

    done: dict[int, dict] = {}
    done_paths = set(storage.list_files(out.join("_progress"), ".done.json"))  # one listing, not a stat per shard
    for shard in plan.shards:
        marker = shard_done_marker(out, shard.index)
        if marker.path in done_paths:
            done[shard.index] = json.loads(storage.read_bytes(marker))
    todo = [s for s in plan.shards if s.index not in done]
    log(
        f"synth: {manifest.num_rows} scripts in {len(plan.shards)} shards; "
        f"{len(done)} already done, {len(todo)} to run on {config.actors.num_actors} actor(s)"
    )

    failed: dict[int, str] = {}
    voices: dict = {}
    if todo:
        failed = _run_shards(config, input_uri, output_uri, todo, done, voices, log=log, t_start=t_start)

    remove_uncommitted(out)  # a shard that failed for good may have left a half-written part
    # A failed shard keeps the parts it committed: they count as done, the rest as failed.
    salvaged = committed_parts(out, set(failed))
    counted = list(done.values()) + [c.__dict__ for c in salvaged]
    rows = sum(d["rows"] for d in counted)
    errors = sum(d["errors"] for d in counted)
    error_scripts = sum(d["error_scripts"] for d in counted)
    audio_s = sum(d["audio_seconds"] for d in counted)
    failed_scripts = sum(s.num_scripts for s in plan.shards if s.index in failed) - sum(c.scripts for c in salvaged)
    wall = time.time() - t_start
    summary = {
        "input": input_uri,
        "output": output_uri,
        "config": config.model_dump(),
        "scripts": manifest.num_rows,
        # scripts_ok + scripts_with_errors + scripts_in_failed_shards == scripts
        "scripts_ok": sum(d["scripts"] - d["error_scripts"] for d in counted),
        "shards": len(plan.shards),
        "shards_done": len(done),
        "shards_failed": {str(k): v for k, v in failed.items()},
        "turns_generated": rows,
        "error_rows": errors,
        "scripts_with_errors": error_scripts,
        "scripts_in_failed_shards": failed_scripts,
        # encoded: by the actor that prepared the voices; by_workers: by shards (0 when the cache works)
        "voices": {**voices, "encoded_by_workers": sum(d.get("voice_encodes", 0) for d in done.values())},
        "audio_seconds": audio_s,
        "audio_hours": audio_s / 3600,
        "wall_seconds": wall,
        "x_real_time": audio_s / wall if wall else 0.0,
    }
    storage.write_bytes_atomic(out.join("run.json"), json.dumps(summary, indent=2).encode())
    log(
        f"synth: done in {_fmt_duration(wall)}: {rows} turns, {audio_s / 3600:.3f} h audio "
        f"({summary['x_real_time']:.2f}x real time), {errors} error rows, {len(failed)} failed shards -> {output_uri}"
    )
    bad_fraction = (error_scripts + failed_scripts) / max(1, manifest.num_rows)
    summary["ok"] = not failed and bad_fraction <= config.job.max_error_rate
    return summary


READY_RETRY_DELAY_S = 2.0
MAX_READY_FAILURES = 30  # consecutive failed `ready` calls (about a minute) before an actor is given up


def _run_shards(config, input_uri, output_uri, todo: list[Shard], done: dict, voices: dict, *, log,
                t_start) -> dict[int, str]:
    """Hand shards to actors until all are done or failed; returns {shard: reason} failed.
    With a voice library, the first actor ready encodes the voices before any shard starts
    (what it did lands in `voices`), so no voice is encoded twice."""
    ray = _init_ray(config)
    from ray.exceptions import RayActorError, RayTaskError

    _check_resources(ray, config)
    actor_cls = ray.remote(
        num_cpus=config.actors.num_cpus, num_gpus=config.actors.num_gpus, max_restarts=-1, max_task_retries=0
    )(SynthActor)
    actors = [
        actor_cls.remote(config.model_dump(), input_uri, output_uri) for _ in range(config.actors.num_actors)
    ]
    pending = {a.ready.remote(): a for a in actors}  # ref -> actor, until the actor has loaded its model
    idle: list = []
    queue = deque(todo)
    attempts: dict[int, int] = {}
    running: dict = {}  # ref -> (actor, shard)
    failed: dict[int, str] = {}
    total_shards = len(todo) + len(done)
    rows_before = rows_total = sum(d["rows"] for d in done.values())
    audio_before = audio_total = sum(d["audio_seconds"] for d in done.values())
    done_before = len(done)
    t_run = time.time()
    last_report = time.time()
    # Actors whose `ready` call failed while Ray restarts them: (when to ask again, actor).
    # A call made just after a crash can fail with "the actor is restarting" before Ray
    # queues calls for the restarted process.
    ask_again: list[tuple[float, object]] = []
    ready_failures: dict = {}  # actor -> consecutive failed `ready` calls
    preparing: dict = {}  # the prepare_voices call in flight: ref -> actor
    voices_ready = not config.voices

    while queue or running:
        now = time.time()
        for entry in [e for e in ask_again if e[0] <= now]:
            ask_again.remove(entry)
            pending[entry[1].ready.remote()] = entry[1]
        if not voices_ready and not preparing and idle:
            actor = idle.pop()
            preparing[actor.prepare_voices.remote()] = actor
        while idle and queue and voices_ready:
            actor, shard = idle.pop(), queue.popleft()
            attempts[shard.index] = attempts.get(shard.index, 0) + 1
            running[actor.run_shard.remote(shard.__dict__)] = (actor, shard)
        refs = list(running) + list(pending) + list(preparing)
        if not refs and not ask_again:
            raise RunError("no actor could be started")
        timeout = min([30.0] + [max(0.0, t - now) for t, _ in ask_again])
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        else:
            time.sleep(timeout)
            ready = []
        if not ready:
            if time.time() - last_report > 60:
                log(f"  ... {len(running)} shards in flight, {len(pending)} actors still starting")
                last_report = time.time()
            continue
        ref = ready[0]
        if ref in preparing:
            actor = preparing.pop(ref)
            try:
                voices.update(ray.get(ref))
            except RayActorError:  # died while encoding: the next actor ready does it
                pending[actor.ready.remote()] = actor
                continue
            except RayTaskError as e:
                raise RunError(f"preparing the voice library failed: {e}") from None
            voices_ready = True
            broken = {k: v["error"] for k, v in voices["voices"].items() if "error" in v}
            log(f"voices: {len(voices['voices'])} ready ({voices['encoded']} encoded now, the rest from "
                f"{output_uri}/_voices)" + "".join(f"; {msg}" for msg in broken.values()))
            idle.append(actor)
            continue
        if ref in pending:
            actor = pending.pop(ref)
            try:
                info = ray.get(ref)
            except RayActorError as e:
                if e.actor_init_failed:
                    raise RunError(f"an actor failed to load the model: {e}") from None
                # Died or lost its node while loading, or is restarting: Ray restarts it
                # (max_restarts=-1); ask again shortly, and give up on it only if it keeps failing.
                ready_failures[actor] = ready_failures.get(actor, 0) + 1
                if ready_failures[actor] > MAX_READY_FAILURES:
                    log(f"an actor failed {ready_failures[actor]} times to come back; going on without it: {e}")
                else:
                    ask_again.append((time.time() + READY_RETRY_DELAY_S, actor))
                continue
            except RayTaskError as e:
                raise RunError(f"an actor failed to load the model: {e}") from None
            ready_failures.pop(actor, None)
            log(f"actor ready: pid {info.get('pid')}, {info.get('engine')} engine on {info.get('device')}")
            idle.append(actor)
            continue
        actor, shard = running.pop(ref)
        try:
            result = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            reason = str(e).strip().splitlines()[-1][:500]
            if attempts[shard.index] >= config.job.max_shard_attempts:
                failed[shard.index] = reason
                log(f"shard {shard.index} FAILED after {attempts[shard.index]} attempts: {reason}")
            else:
                log(f"shard {shard.index} attempt {attempts[shard.index]} failed ({reason}); retrying")
                queue.append(shard)
            if isinstance(e, RayActorError):
                # The actor restarts on its own (max_restarts=-1); wait for it to reload.
                pending[actor.ready.remote()] = actor
            else:
                idle.append(actor)
            continue
        idle.append(actor)
        done[shard.index] = result
        rows_total += result["rows"]
        audio_total += result["audio_seconds"]
        elapsed = time.time() - t_run
        rate = (audio_total - audio_before) / max(elapsed, 1e-9)
        left = total_shards - len(done) - len(failed)
        per_shard = elapsed / max(1, len(done) - done_before)
        log(
            f"[{len(done)}/{total_shards} shards] {rows_total} turns, {audio_total:.1f} s audio "
            f"({rate:.2f}x real time, {(rows_total - rows_before) / max(elapsed, 1e-9):.2f} turns/s), "
            f"ETA {_fmt_duration(left * per_shard)}"
        )
        sys.stdout.flush()
    return failed
