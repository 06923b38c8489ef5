"""The retake loop: every generated turn measured, retaken while it fails, every take on record.

This module owns what QC decides inside a run (`qc.enabled`): each finished take of a turn,
scored (`synth.qc.scorer`; in batches beside generation, `synth.pipeline.qc_stage`), is judged
(`synth.qc.policy`);
a failing take is generated again as the same request (same text and context) with a seed
derived from the turn's seed and the take number, under its own request id, until a take
passes or `qc.max_takes` were tried; then the first passing take, else the best by
`take_score`, is accepted: optionally cleaned up (silence trimmed in whole frames,
loudness normalised) and handed back as the turn's result, so the chain conditions later
turns on it. Takes arrive as the output stores them (`audio_io.as_stored`), so their metrics
describe what is stored; the gain that took is on each take's row (`gain_db`). Rejected takes become rows of the part's takes/ file. Each turn's intended
voice (for `speaker_sim`) is the voice library's clip for its speaker, else the script's
recorded clip of that speaker, else the speaker's first accepted turn in the script.
It knows nothing about Ray, commits or files: `synth.pipeline.worker` calls it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from synth.engine.interface import GenerationRequest, GenerationResult
from synth.pipeline.chain import Chain
from synth.pipeline.record import TakeRow, codes_to_list, take_id
from synth.qc import cleanup
from synth.qc.policy import (
    QcSettings,
    judge,
    pick,
    reason_metric,
    take_score,
    take_seed,
)
from synth.qc.scorer import Take, TakeScorer
from synth.qc.scorer_process import ScorerProcess


@dataclass
class _Take:
    number: int
    seed: int
    result: GenerationResult
    metrics: dict
    reasons: list[str]
    gain_db: float | None  # the full-scale fit its audio took (`audio_io.as_stored`), or None


@dataclass
class Accepted:
    """A turn's kept take: its result (the turn's request id, cleaned up if asked), the QC
    columns of its output row, and the rows of its rejected takes (takes/)."""

    result: GenerationResult
    columns: dict
    rejected: list[dict] = field(default_factory=list)


@dataclass
class QcCounts:
    """QC totals of a part, for its marker and run.json."""

    turns: int = 0
    passed: int = 0
    takes: int = 0
    failed: Counter = field(default_factory=Counter)  # metric -> kept turns failing it
    takes_failed: Counter = field(default_factory=Counter)  # metric -> takes failing it
    failed_scripts: set = field(default_factory=set)
    # speculation (`synth.pipeline.verdicts`): turns and retakes generated ahead of the verdict that needs them,
    # those thrown away (the verdict went the other way), and the frames they had generated (a finished
    # take's; a cancelled request's as the engine reports them, `Engine.cancel`'s on_cancelled)
    speculative_turns: int = 0
    speculative_discarded: int = 0
    speculative_frames_discarded: int = 0

    def to_dict(self) -> dict:
        return {"turns": self.turns, "passed": self.passed, "takes": self.takes, "failed": dict(self.failed),
                "takes_failed": dict(self.takes_failed), "failed_scripts": len(self.failed_scripts),
                "speculative_turns": self.speculative_turns, "speculative_discarded": self.speculative_discarded,
                "speculative_frames_discarded": self.speculative_frames_discarded}


class Retakes:
    """The retake loop of one worker; see the module docstring."""

    def __init__(self, settings: QcSettings, scorer: TakeScorer | ScorerProcess, *, samples_per_frame: int,
                 encode_audio):
        """encode_audio: (samples, take key) -> bytes in the output's format, marked (rejected takes' audio)."""
        self.settings = settings
        self.scorer = scorer
        self.samples_per_frame = samples_per_frame
        self.encode_audio = encode_audio
        self.measured = settings.measured()
        self._takes: dict[str, list[_Take]] = {}  # turn key -> its takes so far
        self._voices: dict[int, dict[int, np.ndarray]] = {}  # id(chain) -> speaker -> reference clip

    # -- references -----------------------------------------------------------------

    def start_chain(self, chain: Chain) -> None:
        """Note the chain's references: voice prompts first, then recorded turns, by speaker."""
        voices: dict[int, np.ndarray] = {}
        for item in chain.candidates:
            if item.segment.audio is not None:
                voices.setdefault(item.segment.speaker, item.segment.audio)
        for turn in chain.turns:
            if turn.recorded is not None and turn.recorded.audio is not None:
                voices.setdefault(turn.speaker, turn.recorded.audio)
        self._voices[id(chain)] = voices

    def end_chain(self, chain: Chain) -> None:
        self._voices.pop(id(chain), None)

    # -- scoring --------------------------------------------------------------------

    def _take(self, chain: Chain, result: GenerationResult) -> Take:
        request = chain.request
        assert request is not None
        return Take(result.audio, request.text, result.codes, self.voice(chain, request.speaker))

    def voice(self, chain: Chain, speaker: int) -> np.ndarray | None:
        """The speaker's reference clip in this chain so far (None: none yet)."""
        return self._voices[id(chain)].get(speaker)

    # -- the decision ---------------------------------------------------------------

    def on_take(self, chain: Chain, result: GenerationResult, counts: QcCounts, script_id: str, *,
                gain_db: float | None = None, metrics: dict | None = None, request: GenerationRequest | None = None,
                turn: int | None = None) -> GenerationRequest | Accepted:
        """A finished take of the chain's current turn (its audio as stored, `gain_db` what that took):
        the next take's request, or the accepted take. metrics: the take's, scored already (else
        scored here); request, turn: the turn's request and index when the chain has gone past it
        (speculation), else the chain's current ones."""
        request = request if request is not None else chain.request
        turn = turn if turn is not None else chain.turn
        assert request is not None
        key = request.request_id
        if metrics is None:
            metrics = self.scorer.score([self._take(chain, result)])[0]
        takes = self._takes.setdefault(key, [])
        number = len(takes) + 1
        reasons = judge(metrics, self.settings.thresholds, self.measured)
        takes.append(_Take(number, take_seed(request.seed, number), result, metrics, reasons, gain_db))
        counts.takes += 1
        counts.takes_failed.update(reason_metric(r) for r in reasons)
        if reasons and number < self.settings.max_takes:
            return self.retake(request, number + 1)
        del self._takes[key]
        kept = takes[pick([take_score(t.metrics, t.reasons) for t in takes])]
        counts.turns += 1
        counts.passed += not kept.reasons
        counts.failed.update(reason_metric(r) for r in kept.reasons)
        if kept.reasons:
            counts.failed_scripts.add(script_id)
        accepted = self._accept(request, kept, num_takes=len(takes))
        accepted.rejected = [self._take_row(key, script_id, turn, t, kept.number) for t in takes if t is not kept]
        if accepted.result.num_frames:  # the speaker's first accepted turn: the reference of its later ones
            self._voices[id(chain)].setdefault(request.speaker, accepted.result.audio)
        return accepted

    def retake(self, request: GenerationRequest, number: int) -> GenerationRequest:
        """Take `number` (2, 3, ...) of the turn whose request is `request`: the same request, its own id and seed."""
        return replace(request, request_id=take_id(request.request_id, number),
                       seed=take_seed(request.seed, number))

    def take_number(self, request: GenerationRequest) -> int:
        """The number the turn's next take to be judged has (its takes judged so far, plus one)."""
        return len(self._takes.get(request.request_id, ())) + 1

    @property
    def can_speculate(self) -> bool:
        """Whether a take as it would be accepted is known before its metrics (`as_accepted`): not when
        silence is trimmed (where to cut is the VAD's)."""
        return not self.settings.cleanup.trim_silence

    def as_accepted(self, request: GenerationRequest, result: GenerationResult) -> GenerationResult:
        """The take (as stored) as the turn's result would be if it were kept, for a speculative
        continuation: loudness-normalised when configured (needs `can_speculate`)."""
        assert self.can_speculate
        return self._normalized(replace(result, request_id=request.request_id))[0]

    def _normalized(self, result: GenerationResult) -> tuple[GenerationResult, float | None]:
        """The result loudness-normalised as `qc.cleanup` asks (unchanged when it does not), and the
        gain that took in dB (None: none)."""
        clean = self.settings.cleanup
        if clean.loudness_lufs is None:
            return result, None
        audio, normalized_db = cleanup.normalize_loudness(result.audio, self.scorer.sample_rate_hz,
                                                          clean.loudness_lufs, clean.max_peak_dbfs)
        return replace(result, audio=audio), normalized_db

    def _accept(self, request: GenerationRequest, kept: _Take, num_takes: int) -> Accepted:
        """The kept take as the turn's result, cleaned up as configured, with its QC columns."""
        result = replace(kept.result, request_id=request.request_id)
        clean = self.settings.cleanup
        trimmed, gain_db = None, kept.gain_db
        if clean.trim_silence and kept.metrics.get("leading_silence_s") is not None and result.num_frames:
            frame_s = self.samples_per_frame / self.scorer.sample_rate_hz
            cut = cleanup.frames_to_trim(kept.metrics["leading_silence_s"], kept.metrics["trailing_silence_s"],
                                         result.num_frames, frame_s, clean.keep_silence_s)
            audio, codes = cleanup.trim(result.audio, result.codes, cut, self.samples_per_frame)
            result = replace(result, audio=audio, codes=codes)
            trimmed = list(cut)
        result, normalized_db = self._normalized(result)
        if normalized_db is not None:  # the row's gain: generation to storage, both steps
            gain_db = normalized_db + (gain_db or 0.0)
        columns = {"qc_pass": not kept.reasons, "qc_reasons": list(kept.reasons), "take": kept.number,
                   "num_takes": num_takes, "seed": kept.seed, **kept.metrics,
                   "trimmed_frames": trimmed, "gain_db": gain_db}
        return Accepted(result, columns)

    def _take_row(self, key: str, script_id: str, turn: int, take: _Take, kept: int) -> dict:
        """A rejected take's row of takes/: metrics, codes, seed, and its audio unless turned off."""
        audio = None
        if self.settings.keep_take_audio:  # marked with its record's id: the turn and the take
            audio = {"bytes": self.encode_audio(take.result.audio, take_id(key, take.number)), "path": None}
        return TakeRow(id=key, script_id=script_id, turn=turn, take=take.number, kept_take=kept, seed=take.seed,
                       num_frames=take.result.num_frames, stop_reason=take.result.stop_reason,
                       codes=codes_to_list(take.result.codes), audio=audio, qc_pass=not take.reasons,
                       qc_reasons=list(take.reasons), metrics=take.metrics, gain_db=take.gain_db).to_dict()


def qc_totals(parts: list[dict]) -> dict | None:
    """run.json's QC totals from the parts' `QcCounts` records (and `models`: each metric group's
    placements, `TakeScorer.placement`, as the parts' actors reported them); None when no part was checked."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    turns, takes = sum(p["turns"] for p in parts), sum(p["takes"] for p in parts)
    failed, takes_failed = Counter(), Counter()
    for p in parts:
        failed.update(p["failed"])
        takes_failed.update(p["takes_failed"])
    passed = sum(p["passed"] for p in parts)
    models: dict[str, set] = {}  # metric group -> every placement a part's scorer reported (actors may differ)
    for p in parts:
        for group, where in p.get("models", {}).items():
            models.setdefault(group, set()).add(where)
    return {"turns": turns, "passed": passed, "pass_rate": passed / turns if turns else None,
            "takes": takes, "takes_per_turn": takes / turns if turns else None,
            "failed_by_metric": dict(sorted(failed.items())), "takes_failed_by_metric": dict(sorted(takes_failed.items())),
            "scripts_failing_qc": sum(p["failed_scripts"] for p in parts),
            "models": {group: sorted(where) for group, where in models.items()},
            **{k: sum(p.get(k, 0) for p in parts)
               for k in ("speculative_turns", "speculative_discarded", "speculative_frames_discarded")}}
