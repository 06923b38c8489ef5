"""One worker's job: turn a shard of the manifest into committed output parts.

This module owns what happens between reading a shard's rows and committing its
output: loading context clips (with a per-worker cache) and voices, deriving per-turn
seeds and length caps, running each script as a chain (every generated turn becomes
context for the next, within the budget `synth.pipeline.context_plan` chooses) while the
engine interleaves the turns of all the shard's scripts, and turning results and
per-row problems into output rows and error rows. It holds one loaded
engine for its whole life. It knows nothing about Ray: `synth.pipeline.runner` wraps it in
an actor, and tests drive it directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from synth.engine.checkpoint import checkpoint_fingerprint, resolve_device
from synth.engine.interface import Engine, GenerationRequest, GenerationResult, Segment
from synth.pipeline import storage
from synth.pipeline.audio_io import AudioError, decode_clip, encode_audio
from synth.pipeline.config import SynthConfig
from synth.pipeline.context_plan import (
    MIN_FRAMES_TO_GENERATE,
    ContextItem,
    ContextPlan,
    ContextTooLong,
    SegmentCost,
    plan_context,
)
from synth.pipeline.manifest import Manifest, RowError, Script, read_scripts
from synth.pipeline.plan import Shard
from synth.pipeline.voices import VoiceLibrary
from synth.pipeline.writer import DatasetWriter, PartCommit, codes_to_list


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

        sampling, gen = config.sampling, config.generation
        widest_top_k = max(sampling.top_k, sampling.depth_top_k)
        return FastEngine.load(
            model_id,
            device=device,
            dtype=model_cfg.dtype,
            num_slots=gen.batch_size,
            max_positions=gen.max_positions,
            compile=model_cfg.compile,
            stop_rules=StopRules(
                silence_frames=gen.silence_stop_frames,
                loop_frames=gen.loop_stop_frames,
                loop_max_period=gen.loop_max_period,
            ),
            # the sampler's static width; top-k 0 (no filter) needs the full-vocabulary path
            top_k_max=None if min(sampling.top_k, sampling.depth_top_k) == 0 else widest_top_k,
            options=config.fast_engine,
        )
    from synth.engine.reference_engine import TransformersEngine

    return TransformersEngine.load(
        model_id,
        device=device,
        dtype=model_cfg.dtype,
        compile=model_cfg.compile,
        batch_size=config.generation.batch_size,
    )


@dataclass
class _Chain:
    """One script being synthesized turn by turn; each generated turn joins the context of the next."""

    script: Script
    part: int
    base_seed: int
    speakers: list[int]
    given: dict[int, Segment]  # turn -> recorded context clip
    candidates: list[ContextItem]  # context so far: voice prompts, then turns with audio in order
    cursor: int = 0  # next turn to look at
    turn: int = -1  # the turn being generated (one at a time),
    request: GenerationRequest | None = None  # its request
    plan: ContextPlan | None = None  # and the context chosen for it


@dataclass
class _Part:
    """A part being synthesized: committed once every one of its scripts is done."""

    scripts: int
    rows: list[dict] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)
    running: int = 0  # chains not yet finished


class ShardWorker:
    """Synthesizes shards with one engine; see the module docstring."""

    def __init__(self, config: SynthConfig, engine: Engine, manifest: Manifest, out: storage.Location, *, log=print):
        self.config = config
        self.engine = engine
        self.manifest = manifest
        self.log = log
        self.writer = DatasetWriter(
            out,
            sample_rate_hz=engine.sample_rate_hz,
            audio_format=config.output.audio_format,
            write_audio_files=config.output.write_audio_files,
        )
        self.frame_rate_hz = engine.sample_rate_hz / engine.samples_per_frame
        self._clips: OrderedDict[str, np.ndarray] = OrderedDict()
        self.voices = VoiceLibrary(config.voices, out, engine, self._clip)
        self.model_id = config.model.resolved_id
        self.model_weights = checkpoint_fingerprint(self.model_id)
        self._cost = SegmentCost(engine)

    # -- inputs ---------------------------------------------------------------------

    def _clip(self, ref: str) -> np.ndarray:
        """A context clip as 24 kHz mono float32, cached by reference (clips recur)."""
        if ref in self._clips:
            self._clips.move_to_end(ref)
            return self._clips[ref]
        try:
            data = storage.read_bytes(storage.resolve(ref))
        except FileNotFoundError:
            raise AudioError(f"audio file not found: {ref}") from None
        except (OSError, pa.ArrowException) as e:  # unreachable host, unknown scheme, denied
            raise AudioError(f"cannot read audio {ref}: {e}") from None
        clip = decode_clip(data, self.engine.sample_rate_hz, name=ref)
        self._clips[ref] = clip
        while len(self._clips) > 256:
            self._clips.popitem(last=False)
        return clip

    def max_frames_for(self, script: Script, text: str) -> int:
        seconds = self.config.generation.turn_cap_seconds(text, script.max_audio_seconds)
        return max(MIN_FRAMES_TO_GENERATE, math.ceil(seconds * self.frame_rate_hz))

    def _start(self, script: Script, part: int) -> _Chain | RowError:
        """A chain for the script, or the error that stops all of it (a bad voice or context clip)."""
        resolved = self.voices.resolve(script)
        if isinstance(resolved, RowError):
            return resolved
        speakers, voices = resolved
        given = {}
        for i, turn in enumerate(script.turns):
            if turn.audio is not None:
                try:
                    given[i] = Segment(speakers[i], turn.text, self._clip(turn.audio))
                except AudioError as e:
                    return RowError(script.row, script.id, "audio", str(e), i)
        base_seed = script.seed if script.seed is not None else derive_seed(self.config.generation.seed, script.id)
        prompts = [ContextItem(f"voice:{v.name}", None, v.segment, self._cost(v.segment), pinned=True)
                   for v in voices]
        return _Chain(script, part, base_seed, speakers, given, prompts)

    def _next(self, chain: _Chain, errors: list[RowError]) -> GenerationRequest | None:
        """The chain's next turn to generate (context planned), or None when it is done.
        Turns that cannot be generated are recorded in `errors` and skipped."""
        script = chain.script
        while chain.cursor < len(script.turns):
            i = chain.cursor
            chain.cursor += 1
            if i in chain.given:  # recorded turns before the first generated one stay pinned
                pinned = all(j in chain.given for j in range(i))
                segment = chain.given[i]
                chain.candidates.append(ContextItem(f"{script.id}:{i}", i, segment, self._cost(segment), pinned))
                continue
            turn = script.turns[i]
            request = GenerationRequest(
                request_id=f"{script.id}:{i}", text=turn.text, speaker=chain.speakers[i],
                max_frames=self.max_frames_for(script, turn.text), seed=chain.base_seed + i,
            )
            try:
                plan = plan_context(chain.candidates, target_cost=self.engine.count_prompt_tokens(request),
                                    max_frames=request.max_frames, max_positions=self.engine.max_positions)
            except ContextTooLong as e:
                errors.append(RowError(script.row, script.id, "validate", str(e), i))
                continue
            request = replace(request, context=tuple(item.segment for item in plan.items))
            room = self.engine.max_positions - self.engine.count_prompt_tokens(request)  # exact, not summed
            if room < MIN_FRAMES_TO_GENERATE:
                errors.append(RowError(script.row, script.id, "validate",
                                       f"prompt leaves no room to generate within {self.engine.max_positions}", i))
                continue
            chain.turn, chain.plan = i, plan
            chain.request = replace(request, max_frames=min(plan.max_frames, room))
            return chain.request
        return None

    def _forget_unreachable(self, chain: _Chain) -> None:
        """Drop recent turns that no later context can reach (those past `max_positions` of newer
        turns), so a long chain, e.g. a book chapter, holds only a window of audio."""
        reach, keep = 0, []
        for item in reversed(chain.candidates):
            if not item.pinned:
                reach += item.cost
                if reach > self.engine.max_positions:
                    continue
            keep.append(item)
        chain.candidates = keep[::-1]

    # -- one shard ------------------------------------------------------------------

    def _row(self, chain: _Chain, result: GenerationResult, shard: Shard) -> dict:
        """The output row of the chain's current turn."""
        turn_index, request, plan = chain.turn, chain.request, chain.plan
        assert request is not None and plan is not None
        script, turn = chain.script, chain.script.turns[turn_index]
        audio_bytes = encode_audio(result.audio, self.engine.sample_rate_hz, self.config.output.audio_format)
        settings = {**self.config.sampling.model_dump(), "dtype": self.config.model.dtype, "max_frames": request.max_frames}
        return {
            "id": result.request_id,
            "script_id": script.id,
            "turn": turn_index,
            "speaker": request.speaker,
            "text": turn.text,
            "audio": {"bytes": audio_bytes, "path": self.writer.audio_path(shard.index, script.id, turn_index)},
            "sampling_rate": self.engine.sample_rate_hz,
            "duration_s": len(result.audio) / self.engine.sample_rate_hz,
            "num_frames": result.num_frames,
            "codes": codes_to_list(result.codes),
            "stop_reason": result.stop_reason,
            "seed": request.seed,
            "voice": turn.voice or script.voice,
            "context_turns": [item.turn for item in plan.items if item.turn is not None],
            "context_ids": [item.key for item in plan.items],
            "num_prompt_tokens": result.num_prompt_tokens,
            "model": self.model_id,
            "model_weights": self.model_weights,
            "engine": self.engine.name,
            "generation": json.dumps(settings, sort_keys=True),
        }

    def run_shard(self, shard: Shard) -> list[PartCommit]:
        """Synthesize one shard. Every script of the shard's uncommitted parts runs at once
        (each as a chain of turns), and a part is committed as soon as its scripts are done;
        parts committed by an earlier attempt are skipped."""
        items = read_scripts(self.manifest, shard.file_index, shard.start, shard.stop)
        per_part = self.config.output.commit_every_scripts
        num_parts = math.ceil(len(items) / per_part)
        commits: dict[int, PartCommit] = {}
        parts: dict[int, _Part] = {}
        t0 = time.perf_counter()

        def commit(index: int) -> None:
            part = parts.pop(index)
            part.rows.sort(key=lambda r: (r["script_id"], r["turn"]))
            done = self.writer.commit_part(shard.index, index, part.rows, part.errors, scripts=part.scripts)
            wall = time.perf_counter() - t0
            self.log(
                f"shard {shard.index} part {index + 1}/{num_parts}: {done.rows} turns, "
                f"{done.audio_seconds:.1f} s audio, {done.errors} errors ({wall:.1f} s into the shard)"
            )
            commits[index] = done

        chains: dict[str, _Chain] = {}  # request id -> the chain generating it
        first: list[GenerationRequest] = []

        def advance(chain: _Chain) -> GenerationRequest | None:
            part = parts[chain.part]
            request = self._next(chain, part.errors)
            if request is None:
                part.running -= 1
                if part.running == 0:
                    commit(chain.part)
                return None
            chains[request.request_id] = chain
            return request

        for index in range(num_parts):
            if self.writer.is_committed(shard.index, index):
                commits[index] = self.writer.read_commit(shard.index, index)
                continue
            chunk = items[index * per_part : (index + 1) * per_part]
            part = parts[index] = _Part(scripts=len(chunk))
            started = []
            for item in chunk:
                chain = self._start(item, index) if isinstance(item, Script) else item
                if isinstance(chain, RowError):
                    part.errors.append(chain)
                else:
                    started.append(chain)
            part.running = len(started) + 1  # +1 until every chain has started
            first += [r for r in map(advance, started) if r is not None]
            part.running -= 1
            if part.running == 0:
                commit(index)

        def on_result(result: GenerationResult) -> list[GenerationRequest]:
            chain = chains.pop(result.request_id)
            parts[chain.part].rows.append(self._row(chain, result, shard))
            generated = Segment(chain.request.speaker, chain.request.text, result.audio)
            if result.num_frames:
                chain.candidates.append(ContextItem(result.request_id, chain.turn, generated, self._cost(generated)))
                self._forget_unreachable(chain)
            follow_up = advance(chain)
            return [follow_up] if follow_up is not None else []

        if first:
            self.engine.run(first, self.config.sampling.to_params(), on_result=on_result)
        assert not parts and not chains, "a part was left uncommitted"
        return [commits[i] for i in range(num_parts)]
