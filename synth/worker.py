"""One worker's job: turn a shard of the manifest into committed output parts.

This module owns what happens between reading a shard's rows and committing its
output: loading context clips (with a per-worker cache), deriving per-turn seeds and
length caps, checking the context budget, handing requests to the engine, and turning
results and per-row problems into output rows and error rows. It holds one loaded
engine for its whole life. It knows nothing about Ray: `synth.ray_runner` wraps it in
an actor, and tests drive it directly.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from synth import storage
from synth.audio_io import AudioError, decode_clip, encode_audio
from synth.config import SynthConfig
from synth.engine import Engine, GenerationRequest, Segment
from synth.manifest import Manifest, RowError, Script, read_scripts
from synth.plan import Shard
from synth.reference_engine import checkpoint_fingerprint
from synth.writer import DatasetWriter, PartCommit, codes_to_list

MIN_FRAMES_TO_GENERATE = 1


def derive_seed(base_seed: int, script_id: str) -> int:
    """A stable 31-bit seed for a script without its own `seed`."""
    digest = hashlib.sha256(f"{base_seed}:{script_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def load_engine(config: SynthConfig) -> Engine:
    """The engine named by the config, loaded through `from_pretrained`'s files."""
    model_cfg = config.model
    model_id = model_cfg.resolved_id
    if model_cfg.build_tiny:
        from synth.tiny_checkpoint import ensure_tiny_checkpoint

        ensure_tiny_checkpoint(model_id)
    from synth.reference_engine import TransformersEngine, resolve_device

    device = resolve_device(model_cfg.device)
    if model_cfg.engine == "fast":
        from synth.fast_engine import FastEngine
        from synth.frame_step import StopRules

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
        )
    return TransformersEngine.load(
        model_id,
        device=device,
        dtype=model_cfg.dtype,
        compile=model_cfg.compile,
        batch_size=config.generation.batch_size,
    )


@dataclass
class _Pending:
    script: Script
    turn: int
    request: GenerationRequest
    context_turns: list[int]


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
        self.model_id = config.model.resolved_id
        self.model_weights = checkpoint_fingerprint(self.model_id)

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

    def _requests(self, script: Script) -> tuple[list[_Pending], list[RowError]]:
        """One request per turn to generate, or the errors that stop the script."""
        base_seed = script.seed if script.seed is not None else derive_seed(self.config.generation.seed, script.id)
        segments: list[Segment | None] = []
        for i, turn in enumerate(script.turns):
            if turn.audio is None:
                segments.append(None)
                continue
            try:
                segments.append(Segment(turn.speaker, turn.text, self._clip(turn.audio)))
            except AudioError as e:
                return [], [RowError(script.row, script.id, "audio", str(e), i)]
        pending, errors = [], []
        for i in script.turns_to_generate:
            turn = script.turns[i]
            context_turns = [j for j in range(i) if segments[j] is not None]
            request = GenerationRequest(
                request_id=f"{script.id}:{i}",
                text=turn.text,
                speaker=turn.speaker,
                max_frames=self.max_frames_for(script, turn.text),
                context=tuple(segments[j] for j in context_turns),
                seed=base_seed + i,
            )
            prompt = self.engine.count_prompt_tokens(request)
            room = self.engine.max_positions - prompt
            if room < MIN_FRAMES_TO_GENERATE:
                errors.append(
                    RowError(
                        script.row, script.id, "validate",
                        f"prompt needs {prompt} positions (text + context audio frames), leaving no room "
                        f"to generate within the model's {self.engine.max_positions}",
                        i,
                    )
                )
                continue
            if request.max_frames > room:
                request = replace(request, max_frames=room)
            pending.append(_Pending(script, i, request, context_turns))
        return pending, errors

    # -- one part -------------------------------------------------------------------

    def _synthesize(self, items: list[Script | RowError], shard: Shard) -> tuple[list[dict], list[RowError]]:
        errors = [it for it in items if isinstance(it, RowError)]
        pending: list[_Pending] = []
        for script in (it for it in items if isinstance(it, Script)):
            p, e = self._requests(script)
            pending.extend(p)
            errors.extend(e)
        sampling = self.config.sampling.to_params()
        results = self.engine.generate([p.request for p in pending], sampling)
        settings = {
            **self.config.sampling.model_dump(),
            "dtype": self.config.model.dtype,
        }
        rows = []
        for p, result in zip(pending, results):
            assert result.request_id == p.request.request_id, "engine returned results out of order"
            turn = p.script.turns[p.turn]
            audio_bytes = encode_audio(result.audio, self.engine.sample_rate_hz, self.config.output.audio_format)
            rows.append(
                {
                    "id": p.request.request_id,
                    "script_id": p.script.id,
                    "turn": p.turn,
                    "speaker": turn.speaker,
                    "text": turn.text,
                    "audio": {"bytes": audio_bytes, "path": self.writer.audio_path(shard.index, p.script.id, p.turn)},
                    "sampling_rate": self.engine.sample_rate_hz,
                    "duration_s": len(result.audio) / self.engine.sample_rate_hz,
                    "num_frames": result.num_frames,
                    "codes": codes_to_list(result.codes),
                    "stop_reason": result.stop_reason,
                    "seed": p.request.seed,
                    "context_turns": p.context_turns,
                    "num_prompt_tokens": result.num_prompt_tokens,
                    "model": self.model_id,
                    "model_weights": self.model_weights,
                    "engine": self.engine.name,
                    "generation": json.dumps({**settings, "max_frames": p.request.max_frames}, sort_keys=True),
                }
            )
        return rows, errors

    def run_shard(self, shard: Shard) -> list[PartCommit]:
        """Synthesize one shard, committing every `commit_every_scripts` scripts; parts
        already committed (by an earlier attempt) are skipped."""
        items = read_scripts(self.manifest, shard.file_index, shard.start, shard.stop)
        per_part = self.config.output.commit_every_scripts
        commits = []
        num_parts = math.ceil(len(items) / per_part)
        for part in range(num_parts):
            if self.writer.is_committed(shard.index, part):
                commits.append(self.writer.read_commit(shard.index, part))
                continue
            chunk = items[part * per_part : (part + 1) * per_part]
            t0 = time.perf_counter()
            rows, errors = self._synthesize(chunk, shard)
            commit = self.writer.commit_part(shard.index, part, rows, errors, scripts=len(chunk))
            wall = time.perf_counter() - t0
            self.log(
                f"shard {shard.index} part {part + 1}/{num_parts}: {commit.rows} turns, "
                f"{commit.audio_seconds:.1f} s audio in {wall:.1f} s "
                f"({commit.audio_seconds / max(wall, 1e-9):.2f}x real time), {commit.errors} errors"
            )
            commits.append(commit)
        return commits
