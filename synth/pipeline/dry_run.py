"""`--dry-run`: validate every row of a manifest and estimate the work, loading no model.

This module owns the dry-run report: the shard plan's size, the turns to generate and
the audio they will make (at a typical speaking rate, and at most under the length
caps), and the first bad rows, each naming its row and problem. Beyond the per-row
checks every run makes when it reads a shard, it checks that context clips and voice
reference clips exist (each distinct clip once). It streams the manifest in batches, so
memory stays bounded for millions of rows. It knows nothing about Ray or the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from synth.pipeline.config import SynthConfig, unknown_voice
from synth.pipeline.manifest import (
    Manifest,
    RowError,
    Script,
    check_unique_ids,
    iter_scripts,
    open_manifest,
)
from synth.pipeline.plan import Plan, plan_shards
from synth.store import storage
from synth.store.errors import StoreError

MAX_ERRORS_SHOWN = 20


@dataclass
class DryRunReport:
    """What a run of the manifest would do; `render()` is what `--dry-run` prints."""

    shards: int
    scripts: int
    bad_rows: int
    turns_to_generate: int
    context_turns: int
    est_audio_hours: float
    max_audio_hours: float
    errors: list[RowError] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            f"plan: {self.shards} shards, {self.scripts} scripts ({self.bad_rows} with errors)",
            f"turns to generate: {self.turns_to_generate} (context turns with audio: {self.context_turns})",
            f"audio: ~{self.est_audio_hours:.3f} h at a typical speaking rate, "
            f"at most {self.max_audio_hours:.3f} h under the length caps",
        ]
        lines += [f"  bad row: {e}" for e in self.errors]
        if self.bad_rows > len(self.errors):
            lines.append(f"  ... and {self.bad_rows - len(self.errors)} more")
        return "\n".join(lines)


def dry_run(config: SynthConfig, manifest: Manifest, plan: Plan) -> DryRunReport:
    """Validate every row and estimate the work, streaming the manifest in batches."""
    gen, rate = config.generation, config.job.speaking_rate_chars_per_second
    report = DryRunReport(len(plan.shards), manifest.num_rows, 0, 0, 0, 0.0, 0.0)
    clip_exists: dict[str, bool] = {}  # voice prompts recur: one look-up per distinct clip

    def exists(ref: str) -> bool:
        if ref not in clip_exists:
            try:
                clip_exists[ref] = storage.exists(storage.resolve(ref))
            except (OSError, StoreError):  # an unknown scheme, an unreachable store: the row's problem
                clip_exists[ref] = False
        return clip_exists[ref]

    def problem(script: Script) -> RowError | None:
        for i, turn in enumerate(script.turns):
            if turn.audio is not None and not exists(turn.audio):
                return RowError(script.row, script.id, "audio", f"audio file not found: {turn.audio}", i)
            name = turn.voice or (script.voice if i == 0 else None)
            if name is None:
                continue
            voice = config.voices.get(name)
            if voice is None:
                return RowError(script.row, script.id, "voice", unknown_voice(name, config.voices), i)
            if not exists(voice.audio):
                return RowError(script.row, script.id, "voice", f"voice {name!r}: reference clip not found: "
                                f"{voice.audio}", i)
        return None

    for item in iter_scripts(manifest):
        if isinstance(item, Script):
            item = problem(item) or item
        if isinstance(item, RowError):
            report.bad_rows += 1
            if len(report.errors) < MAX_ERRORS_SHOWN:
                report.errors.append(item)
            continue
        assert isinstance(item, Script)
        for turn in item.turns:
            if turn.audio is not None:
                report.context_turns += 1
                continue
            report.turns_to_generate += 1
            cap = gen.turn_cap_seconds(turn.text, item.max_audio_seconds)
            report.max_audio_hours += cap / 3600
            report.est_audio_hours += min(cap, len(turn.text) / rate) / 3600
    return report


def dry_run_report(config: SynthConfig, input_uri: str) -> DryRunReport:
    """Open the manifest, refuse duplicate ids, plan it, and validate every row."""
    manifest = open_manifest(input_uri)
    check_unique_ids(manifest)
    return dry_run(config, manifest, plan_shards(manifest, config.output.scripts_per_shard))
