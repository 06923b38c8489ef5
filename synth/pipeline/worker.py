"""One worker's job: turn a shard of the manifest into committed output parts.

This module owns what happens between reading a shard's rows and committing its
output: loading context clips (with a per-worker cache of at most `CLIP_CACHE_BYTES`)
and voices, deriving per-turn seeds and length caps, running each script as a chain
(`synth.pipeline.chain`: every generated turn becomes context for the next) while the
engine interleaves the turns of all the shard's scripts, and turning results and
per-row problems into output rows (with the context each turn lost in `warnings`) and
error rows. Every finished take's audio is converted to what the output stores before it
is measured or written (`audio_io.as_stored`: a take louder than full scale is scaled down,
its gain in the row's `gain_db`, never clipped); later turns hear the take QC kept as stored,
or without QC the take as generated. With `qc.enabled`, QC runs beside generation: each
finished take goes on the QC stage's bounded queue (`synth.pipeline.qc_stage`; the engine's
result path waits only when it is full), is scored there in a batch, and its verdict (the
retake loop, `synth.pipeline.retakes`, applied in chain order by `synth.pipeline.verdicts`)
hands the engine the turn's next take or the chain's next turn; with `qc.speculative` the
next turn is generated while the verdict is pending. A part commits its rejected takes with
its rows. The engine's result thread and the QC thread share the shard's state under one lock. A shard's rows must be the ones the plan gave it (their ids' hash), or
nothing is generated. A shard that failed before is run again with its scripts isolated,
one chain at a time, so that a script that makes generation fail becomes an error row
and the rest of its part is committed. It holds one loaded engine (and QC scorer) for its
whole life. It knows nothing about Ray: `synth.pipeline.actor` wraps it in an actor, and
tests drive it directly.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from synth.engine.checkpoint import checkpoint_fingerprint, resolve_device
from synth.engine.interface import Engine, GenerationRequest, GenerationResult, SamplingParams, Segment
from synth.pipeline.audio_io import AudioError, as_stored, decode_clip, encode_audio
from synth.pipeline.chain import Chain, ChainTurn
from synth.pipeline.config import SynthConfig
from synth.pipeline.context_plan import MIN_FRAMES_TO_GENERATE, ContextItem, ContextPlan, SegmentCost
from synth.pipeline.manifest import Manifest, RowError, Script, read_scripts
from synth.pipeline.output import PartCommit, part_name
from synth.pipeline.plan import Shard
from synth.pipeline.provenance import Provenance
from synth.pipeline.qc_stage import QcStage
from synth.pipeline.record import OutputRow, codes_to_list, no_qc, row_id, voice_key
from synth.pipeline.retakes import QcCounts, Retakes
from synth.pipeline.spoken import spoken_text
from synth.pipeline.verdicts import ChainFlight, KeepRate, PendingTake, score_wanted
from synth.pipeline.voices import VoiceLibrary
from synth.pipeline.writer import DatasetWriter
from synth.qc.scorer import Take
from synth.store import storage
from synth.store.errors import StopRun, StoreError
from synth.store.faults import raise_point
from synth.store.marker import Damaged
from synth.store.store import Store

CLIP_CACHE_BYTES = 256 * 2**20  # decoded context clips a worker keeps (float32 samples), least recently used out
QC_MAX_QUEUED = 64  # finished takes waiting for the QC stage before the engine's result path waits


def derive_seed(base_seed: int, script_id: str) -> int:
    """A stable 31-bit seed for a script without its own `seed`."""
    digest = hashlib.sha256(f"{base_seed}:{script_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def load_engine(config: SynthConfig) -> Engine:
    """The engine named by the config, loaded through `from_pretrained`'s files."""
    model_cfg = config.model
    model_id = model_cfg.resolved_id
    if model_cfg.build_tiny:
        from synth.engine.tiny_checkpoint import ensure_tiny_checkpoint

        ensure_tiny_checkpoint(model_id)
    device = resolve_device(model_cfg.device)
    if model_cfg.engine == "fast":
        from synth.engine.fast_engine import FastEngine
        from synth.engine.stop import StopRules

        sampling, fast = config.sampling, config.fast_engine
        widest_top_k = max(sampling.top_k, sampling.depth_top_k)
        return FastEngine.load(
            model_id,
            device=device,
            dtype=model_cfg.dtype,
            num_slots=fast.num_slots,
            max_positions=fast.max_positions,
            compile=model_cfg.compile,
            stop_rules=StopRules(
                silence_frames=fast.silence_stop_frames,
                loop_frames=fast.loop_stop_frames,
                loop_max_period=fast.loop_max_period,
            ),
            # the sampler's static width; top-k 0 (no filter) needs the full-vocabulary path
            top_k_max=None if min(sampling.top_k, sampling.depth_top_k) == 0 else widest_top_k,
            options=fast.options(),
            max_audio_seconds=config.generation.max_audio_seconds,  # the longest row: sizes the engine's memory plan
            log=lambda line: print(line, flush=True),  # the memory plan and warm-up, in the actor's log
        )
    from synth.engine.reference_engine import TransformersEngine

    return TransformersEngine.load(
        model_id,
        device=device,
        dtype=model_cfg.dtype,
        compile=model_cfg.compile,
        batch_size=config.transformers_engine.batch_size,
    )


@dataclass
class _Part:
    """A part being synthesized: committed once every one of its scripts is done."""

    index: int
    scripts: int
    rows: list[dict] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    takes: list[dict] = field(default_factory=list)  # rows of rejected takes (QC on)
    qc: QcCounts = field(default_factory=QcCounts)
    running: int = 0  # chains not yet finished
    cancelling: int = 0  # QC on: speculative requests cancelled whose frames the engine has yet to report
    manifest_rows: dict[str, int] = field(default_factory=dict)  # row id -> its script's manifest row


class ShardWorker:
    """Synthesizes shards with one engine; see the module docstring."""

    def __init__(self, config: SynthConfig, engine: Engine, manifest: Manifest, store: Store, *, log=print):
        """store: the output, with the run whose lease the worker commits under (its run_id; None:
        no lease check, e.g. tests) and the hash of the run's settings its markers record."""
        self.config = config
        self.engine = engine
        self.manifest = manifest
        self.log = log
        self.store = store
        self.writer = DatasetWriter(
            self.store,
            sample_rate_hz=engine.sample_rate_hz,
            audio_format=config.output.audio_format,
            write_audio_files=config.output.write_audio_files,
        )
        self.frame_rate_hz = engine.sample_rate_hz / engine.samples_per_frame
        self._clips: OrderedDict[str, np.ndarray] = OrderedDict()  # ref -> clip, least recently used first
        self._clip_bytes = 0  # their samples' bytes, at most clip_cache_bytes
        self.clip_cache_bytes = CLIP_CACHE_BYTES
        self.qc_max_queued = QC_MAX_QUEUED
        self.keep_rate = KeepRate()  # when speculating on a take pays (`synth.pipeline.verdicts`), learnt over the worker's life
        self.voices = VoiceLibrary(config.voices, self.store, engine, self._clip)
        self.model_id = config.model.resolved_id
        self.model_weights = checkpoint_fingerprint(self.model_id)
        self.provenance = Provenance(True, self.model_id, self.model_weights)  # marks every clip it encodes
        self._cost = SegmentCost(engine)
        self.spoken = spoken_text(config.text)  # written -> what the model is given
        self.retakes = self._retakes(config, engine)

    def encode(self, audio: np.ndarray, key: str) -> bytes:
        """A clip's bytes in the output's format, marked as AI-generated speech of row (or take) `key`."""
        return encode_audio(audio, self.engine.sample_rate_hz, self.config.output.audio_format,
                            self.provenance.audio_tags(key))

    def _retakes(self, config: SynthConfig, engine: Engine) -> Retakes | None:
        """The retake loop with its scorer's models loaded (once, here; in their own process with
        `qc.own_process`), or None with QC off."""
        if not config.qc.enabled:
            return None
        from synth.qc.scorer import TakeScorer
        from synth.qc.scorer_process import ScorerProcess

        device = resolve_device(config.model.device)
        if config.qc.own_process:
            scorer = ScorerProcess(config.qc, engine.sample_rate_hz, device=device)
        else:
            scorer = TakeScorer(config.qc, engine.sample_rate_hz, device=device).load().warm_up()
        return Retakes(config.qc, scorer, samples_per_frame=engine.samples_per_frame, encode_audio=self.encode)

    def close(self) -> None:
        """Stop the QC scorer's workers (and its process, with `qc.own_process`); the engine stays."""
        if self.retakes is not None:
            self.retakes.scorer.close()

    # -- inputs ---------------------------------------------------------------------

    def _clip(self, ref: str) -> np.ndarray:
        """A context clip as 24 kHz mono float32, cached by reference (clips recur) within
        `clip_cache_bytes`; a clip larger than that alone is decoded each time it is used."""
        if ref in self._clips:
            self._clips.move_to_end(ref)
            return self._clips[ref]
        try:
            data = storage.read_bytes(storage.resolve(ref))
        except FileNotFoundError:
            raise AudioError(f"audio file not found: {ref}") from None
        except (OSError, pa.ArrowException, StoreError) as e:  # unreachable host, unknown scheme, denied
            raise AudioError(f"cannot read audio {ref}: {e}") from None
        clip = decode_clip(data, self.engine.sample_rate_hz, name=ref)
        if clip.nbytes <= self.clip_cache_bytes:
            self._clips[ref] = clip
            self._clip_bytes += clip.nbytes
            while self._clip_bytes > self.clip_cache_bytes:
                self._clip_bytes -= self._clips.popitem(last=False)[1].nbytes
        return clip

    def max_frames_for(self, script: Script, text: str) -> int:
        seconds = self.config.generation.turn_cap_seconds(text, script.max_audio_seconds)
        return max(MIN_FRAMES_TO_GENERATE, math.ceil(seconds * self.frame_rate_hz))

    def chain_for(self, script: Script) -> Chain | RowError:
        """The script as a chain, or the error that stops all of it (a bad voice or context clip)."""
        resolved = self.voices.resolve(script)
        if isinstance(resolved, RowError):
            return resolved
        speakers, voices = resolved
        base_seed = script.seed if script.seed is not None else derive_seed(self.config.generation.seed, script.id)
        turns = []
        for i, turn in enumerate(script.turns):
            recorded = None
            text = self.spoken(turn.text)  # a recorded turn's transcript too: the model reads it as it would say it
            if turn.audio is not None:
                try:
                    recorded = Segment(speakers[i], text, self._clip(turn.audio))
                except AudioError as e:
                    return RowError(script.row, script.id, "audio", str(e), i)
            turns.append(ChainTurn(row_id(script.id, i), speakers[i], text, recorded,
                                   max_frames=self.max_frames_for(script, text), seed=base_seed + i))
        prompts = [ContextItem(voice_key(v.name), None, v.segment, self._cost(v.segment), pinned=True)
                   for v in voices]
        return Chain(turns, self.engine, self._cost, prompts, context_from=self.config.context_from,
                     context_low_water=self.config.generation.context_low_water)

    # -- one shard ------------------------------------------------------------------

    def output_row(self, script: Script, turn_index: int, request: GenerationRequest, plan: ContextPlan | None,
                   result: GenerationResult, shard: Shard, qc_columns: dict | None = None) -> dict:
        """The output row of turn `turn_index`, generated from `request` with `plan`'s context;
        qc_columns: its QC decision and metrics (the kept take's seed among them) and `gain_db`,
        or None for a row without QC or gain."""
        assert plan is not None
        turn = script.turns[turn_index]
        qc = dict(qc_columns or no_qc())
        seed = qc.pop("seed", request.seed)  # with QC, the kept take's
        settings = {**self.config.sampling.model_dump(), "dtype": self.config.model.dtype, "max_frames": request.max_frames}
        return OutputRow(
            id=result.request_id,
            script_id=script.id,
            turn=turn_index,
            speaker=request.speaker,
            text=turn.text,
            spoken_text=request.text,
            audio={"bytes": self.encode(result.audio, result.request_id),
                   "path": self.writer.audio_path(shard.index, script.id, turn_index)},
            sampling_rate=self.engine.sample_rate_hz,
            duration_s=len(result.audio) / self.engine.sample_rate_hz,
            num_frames=result.num_frames,
            codes=codes_to_list(result.codes),
            stop_reason=result.stop_reason,
            seed=seed,
            voice=turn.voice or script.voice,
            context_turns=[item.turn for item in plan.items if item.turn is not None],
            context_ids=[item.key for item in plan.items],
            warnings="; ".join(plan.notes) or None,
            num_prompt_tokens=result.num_prompt_tokens,
            model=self.model_id,
            model_weights=self.model_weights,
            engine=self.engine.name,
            generation=json.dumps(settings, sort_keys=True),
            qc=qc,
        ).to_dict()

    def run_shard(self, shard: Shard, *, isolate: bool = False) -> list[PartCommit]:
        """Synthesize one shard. Every script of the shard's uncommitted parts runs at once
        (each as a chain of turns), and a part is committed as soon as its scripts are done;
        parts committed by an earlier attempt are skipped. With `isolate` (the shard failed
        before), each script runs alone, and one whose generation raises becomes an error row."""
        items = read_scripts(self.manifest, shard.file_index, shard.start, shard.stop, shard.ids_sha256)
        run = _ShardRun(self, shard, items)
        params = self.config.sampling.to_params()
        if not isolate:
            first = [request for index in range(run.num_parts) for request in run.start_part(index)]
            if first:
                run.generate(first, params)
            return run.finished()
        for index in range(run.num_parts):
            by_chain: dict[int, list[GenerationRequest]] = {}  # a chain's first requests (its takes side by side)
            for request in run.start_part(index):
                by_chain.setdefault(id(run.chains[request.request_id][2]), []).append(request)
            for requests in by_chain.values():
                who = run.chains[requests[0].request_id]
                try:
                    run.generate(requests, params)
                except StopRun:
                    raise
                except Exception as e:  # this script's own failure: an error row, and the part goes on
                    run.fail_chain(*who, e)
        return run.finished()


@dataclass
class _Queued:
    """A take on the QC stage's queue: whose it is, its record awaiting a verdict, and what to score."""

    part: _Part
    script: Script
    chain: Chain
    pending: PendingTake
    take: Take


class _ShardRun:
    """One shard in flight: its parts, the chains generating their scripts, and the commits.

    The engine interleaves the turns of every chain; the run is the engine's `on_result`.
    Without QC it takes each finished turn, adds its row to its part, and returns the chain's
    next turn. With QC (`generate` runs a `QcStage` beside the engine) it puts each finished
    take on the stage's queue and returns at once (a speculative next turn, if any, handed to
    the engine); the stage's thread scores a batch and applies the verdicts (`_apply`): kept
    takes become rows, retakes and next turns go to the engine (`Engine.submit`), discarded
    speculation is cancelled. A part is committed the moment its last chain finishes. Both
    threads change the run's state only under `lock`."""

    def __init__(self, worker: ShardWorker, shard: Shard, items: list[Script | RowError]):
        self.worker, self.shard, self.items = worker, shard, items
        self.per_part = worker.config.output.commit_every_scripts
        self.num_parts = math.ceil(len(items) / self.per_part)
        self.commits: dict[int, PartCommit] = {}
        self.parts: dict[int, _Part] = {}  # parts not yet committed
        self.chains: dict[str, tuple[_Part, Script, Chain]] = {}  # request id -> who generates it
        self.flights: dict[int, ChainFlight] = {}  # QC on: id(chain) -> its takes awaiting verdicts
        self.cancelled: dict[str, _Part] = {}  # QC on: speculative requests cancelled -> their part
        self.lock = threading.RLock()
        self.stage: QcStage | None = None
        self._open = False  # QC on: the engine's submissions are open (closed when no chain of the run is left)
        self._live = 0  # QC on: chains of the `generate` under way not yet finished
        self._generating: set[int] = set()  # QC on: id() of the chains of the `generate` under way
        self.t0 = time.perf_counter()

    def generate(self, requests: list[GenerationRequest], params: SamplingParams) -> None:
        """Run the engine on `requests` and everything that follows from them; with QC, the QC stage
        beside it, until no chain is left. An error on the QC thread ends the run and is raised here."""
        engine, retakes = self.worker.engine, self.worker.retakes
        if retakes is None:
            engine.run(requests, params, on_result=self)
            return
        self.stage = QcStage(self._score, self._apply, max_queued=self.worker.qc_max_queued,
                             on_error=lambda e: self._close_submissions())
        with self.lock:
            self._generating = {id(self.chains[r.request_id][2]) for r in requests}  # the chains of this call
            self._open, self._live = True, len(self._generating)
            engine.open_submissions()
        try:
            engine.run(requests, params, on_result=self)
        except BaseException:
            self._close_submissions()
            self.stage.close(discard=True)
            if self.stage.error is not None:  # the engine saw the stage's failure: raise the failure itself
                raise self.stage.error from None
            raise
        self._close_submissions()  # closed already unless the QC thread failed
        self.stage.close()
        if self.stage.error is not None:
            raise self.stage.error
        assert self._live == 0, "the engine ran out of work while a chain awaited a verdict"

    def _close_submissions(self) -> None:
        with self.lock:
            if self._open:
                self._open = False
                self.worker.engine.close_submissions()

    def start_part(self, index: int) -> list[GenerationRequest]:
        """Start every script of part `index` (unless committed before); returns their first requests."""
        try:
            marker = self.worker.store.marker(part_name(self.shard.index, index))
        except Damaged:
            marker = None  # made again, and its marker replaced
        if marker is not None:
            self.commits[index] = PartCommit.from_marker(marker)
            return []
        chunk = self.items[index * self.per_part : (index + 1) * self.per_part]
        part = self.parts[index] = _Part(index, scripts=len(chunk))
        first = []
        retakes = self.worker.retakes
        for item in chunk:
            chain = self.worker.chain_for(item) if isinstance(item, Script) else item
            if isinstance(chain, RowError):
                part.errors.append(chain)
                continue
            if retakes is not None:
                retakes.start_chain(chain)
                flight = ChainFlight(chain, retakes, speculate=self.worker.config.qc.speculative,
                                     keep_rate=self.worker.keep_rate)
                requests = flight.first(self._skip(part, item), part.qc)
                if requests:
                    self.flights[id(chain)] = flight
                    self.chains.update((r.request_id, (part, item, chain)) for r in requests)
                else:
                    retakes.end_chain(chain)
            else:
                request = self._next(part, item, chain)
                requests = [request] if request is not None else []
            if requests:
                first += requests
                part.running += 1
        if part.running == 0:
            self._commit(part)
        return first

    def _stored(self, result: GenerationResult) -> tuple[GenerationResult, float | None]:
        """The result with its audio as the output will store it (`as_stored`: scaled, never clipped,
        if it is louder than full scale; 16-bit), so QC measures, later turns hear and the row holds
        the same samples; and the gain in dB (None: none)."""
        audio, gain_db = as_stored(result.audio)
        return replace(result, audio=audio), gain_db

    def __call__(self, result: GenerationResult) -> list[GenerationRequest]:
        """A finished turn (or take): without QC, its row and its chain's next turn (or the chain's
        end); with QC, queued for the QC stage."""
        if self.worker.retakes is not None:
            self._on_take(result)
            return []
        part, script, chain = self.chains.pop(result.request_id)
        raise_point("generate", script.id)  # fault-injection tests: a script whose generation fails
        generated = result
        result, gain_db = self._stored(result)
        row = self.worker.output_row(script, chain.turn, chain.request, chain.plan, result, self.shard,
                                     {**no_qc(), "gain_db": gain_db})
        part.rows.append(row)
        part.manifest_rows[result.request_id] = script.row
        chain.add_result(generated)  # later turns hear the take as generated (without QC)
        request = self._next(part, script, chain)
        if request is not None:
            return [request]
        self._end_chain(part, chain)
        return []

    # -- QC: the engine's side ------------------------------------------------------

    def _on_take(self, result: GenerationResult) -> None:
        """A finished take: recorded, maybe continued ahead of its verdict, and queued for scoring
        (outside the lock: a full queue holds the engine's result path back, not the QC thread)."""
        with self.lock:
            who = self.chains.pop(result.request_id, None)
            if who is None:  # a speculative turn cancelled when it was already on its way here
                part = self.cancelled.pop(result.request_id, None)
                if part is not None and part.index in self.parts:
                    part.qc.speculative_frames_discarded += result.num_frames
                return
            part, script, chain = who
            raise_point("generate", script.id)  # fault-injection tests: a script whose generation fails
            stored, gain_db = self._stored(result)
            ready, ahead = self.flights[id(chain)].on_take(result.request_id, stored, gain_db, part.qc)
            if ahead:
                self.chains.update((r.request_id, who) for r in ahead)
                self.worker.engine.submit(ahead)
        for pending, take in ready:
            self.stage.put(_Queued(part, script, chain, pending, take))

    # -- QC: the stage's side -------------------------------------------------------

    def _score(self, items: list[_Queued]) -> list[dict | None]:
        """Metrics of the queued takes still wanted (None for those discarded meanwhile), in one batch."""
        return score_wanted(self.worker.retakes.scorer, [(item.pending, item.take) for item in items])

    def _apply(self, items: list[_Queued], metrics: list[dict | None]) -> None:
        """The verdicts the batch makes possible, chain by chain, in each chain's order."""
        with self.lock:
            touched: dict[int, _Queued] = {}
            for item, m in zip(items, metrics):
                if m is not None and not item.pending.discarded:
                    item.pending.metrics = m
                    touched.setdefault(id(item.chain), item)
            for item in touched.values():
                if id(item.chain) in self.flights:
                    self._decide(item.part, item.script, item.chain)
            self._bet_again()

    def _bet_again(self) -> None:
        """Takes generating alone whose bet has turned since (e.g. a run's first takes, requested before
        any verdict) get the turn's next takes beside them (`ChainFlight.bet_again`)."""
        submit: list[GenerationRequest] = []
        for key in self._generating & self.flights.keys():  # not the chains waiting for a run of their own
            flight = self.flights[key]
            who = self.chains.get(flight.in_flight[0]) if len(flight.in_flight) == 1 else None
            if who is not None:
                siblings = flight.bet_again(who[0].qc)
                self.chains.update((r.request_id, who) for r in siblings)
                submit += siblings
        if submit:
            self.worker.engine.submit(submit)

    def _decide(self, part: _Part, script: Script, chain: Chain) -> None:
        verdicts = self.flights[id(chain)].decide(part.qc, script.id)
        engine = self.worker.engine
        for request_id in verdicts.cancel:
            part.cancelling += 1
            engine.cancel(request_id, functools.partial(self._cancelled, part))
            self.chains.pop(request_id, None)
            self.cancelled[request_id] = part
        for pending, accepted in verdicts.accepted:
            part.takes += accepted.rejected
            part.rows.append(self.worker.output_row(script, pending.turn, pending.request, pending.plan,
                                                    accepted.result, self.shard, accepted.columns))
            part.manifest_rows[accepted.result.request_id] = script.row
        for turn, reason in verdicts.skipped:
            part.errors.append(RowError(script.row, script.id, "validate", reason, turn))
        for request in verdicts.submit:
            self.chains[request.request_id] = (part, script, chain)
        if verdicts.submit:
            engine.submit(verdicts.submit)
        if verdicts.done:
            self._end_chain(part, chain)

    def _cancelled(self, part: _Part, frames: int) -> None:
        """The engine applied a cancel of the part's (on its thread): the frames it had generated
        count as discarded; the part commits if it only waited for that."""
        with self.lock:
            part.qc.speculative_frames_discarded += frames
            part.cancelling -= 1
            if part.running == 0 and part.cancelling == 0:
                self._commit(part)

    # -- chains and parts -----------------------------------------------------------

    def _end_chain(self, part: _Part, chain: Chain) -> None:
        if self.worker.retakes is not None:
            self.worker.retakes.end_chain(chain)
            self.flights.pop(id(chain), None)
        part.running -= 1
        if part.running == 0 and part.cancelling == 0:  # else the last cancel's report commits it
            self._commit(part)
        self._live -= 1
        if self._live <= 0:
            self._close_submissions()

    def fail_chain(self, part: _Part, script: Script, chain: Chain, error: Exception) -> None:
        """The script made generation raise (run alone): its rows and takes are dropped, one error
        row names the script and the error, and its part goes on."""
        for key in [k for k, (_, other, _) in self.chains.items() if other is script]:
            del self.chains[key]
        part.rows = [r for r in part.rows if r["script_id"] != script.id]
        part.takes = [t for t in part.takes if t["script_id"] != script.id]
        reason = f"generation failed: {error.__class__.__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        part.errors.append(RowError(script.row, script.id, "generate", reason, chain.turn))
        self.worker.log(f"shard {self.shard.index}: row {script.row} ({script.id!r}) failed on its own: {reason}")
        self._end_chain(part, chain)

    def finished(self) -> list[PartCommit]:
        assert not self.parts and not self.chains, "a part was left uncommitted"
        return [self.commits[i] for i in range(self.num_parts)]

    def _skip(self, part: _Part, script: Script):
        """skip(turn, reason): a turn that cannot be generated, as an error row."""
        def skip(turn: int, reason: str) -> None:
            part.errors.append(RowError(script.row, script.id, "validate", reason, turn))
        return skip

    def _next(self, part: _Part, script: Script, chain: Chain) -> GenerationRequest | None:
        """The chain's next request (registered as in flight); skipped turns become error rows."""
        request = chain.next_request(self._skip(part, script))
        if request is not None:
            self.chains[request.request_id] = (part, script, chain)
        return request

    def _commit(self, part: _Part) -> None:
        del self.parts[part.index]
        part.rows.sort(key=lambda r: (r["script_id"], r["turn"]))
        retakes = self.worker.retakes
        # the counts, and where (and in what precision) each QC model ran: run.json's qc.models
        qc = {**part.qc.to_dict(), "models": retakes.scorer.placement} if retakes is not None else None
        done = self.worker.writer.commit_part(self.shard.index, part.index, part.rows, part.errors,
                                              scripts=part.scripts, takes=part.takes, qc=qc,
                                              manifest_rows=part.manifest_rows)
        warned = sum(1 for row in part.rows if row["warnings"])
        self.worker.log(
            f"shard {self.shard.index} part {part.index + 1}/{self.num_parts}: {done.rows} turns, "
            f"{done.audio_seconds:.1f} s audio, {done.errors} errors"
            + (f", {warned} turns with `warnings` (context left out)" if warned else "")
            + (f", QC passed {part.qc.passed}/{part.qc.turns} turns in {part.qc.takes} takes" if qc else "")
            + (f", {part.qc.speculative_discarded}/{part.qc.speculative_turns} speculative requests discarded"
               if qc and part.qc.speculative_turns else "")
            + f" ({time.perf_counter() - self.t0:.1f} s into the shard)"
        )
        self.commits[part.index] = done
