"""The QC policy: which metrics run, their thresholds, the retakes, and the decision.

This module owns the `qc:` settings (frozen stdlib dataclasses that check their values
when built; `synth.pipeline.config` validates them from YAML with pydantic, which
refuses unknown keys through `__pydantic_config__`), `judge` (a take's failed checks as
reasons, "metric: value vs bound"), `take_score` (the documented order that picks the
best take when none passes), `take_seed` (a retake's seed, derived from the turn's seed
and the take number alone, so the same seeds and settings give the same decisions) and
`pick`. Defaults and where each comes from are in the README (*Quality control*). It knows
nothing about models, outputs or Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

# Metric groups that can be turned on, and the output columns each fills.
METRIC_COLUMNS = {
    "asr": ("asr_text", "wer", "cer"),
    "speaker": ("speaker_sim",),
    "dnsmos": ("dnsmos",),
    "level": ("loudness_lufs", "peak_dbfs", "clipped_fraction"),
    "timing": ("leading_silence_s", "trailing_silence_s", "speech_ratio", "chars_per_s"),
    "repetition": ("loop_score",),
}
METRICS = tuple(c for cols in METRIC_COLUMNS.values() for c in cols)  # every metric column, in order
_FORBID = {"extra": "forbid"}  # a plain dict: this layer does not import pydantic
MAX_WORKERS = 64  # qc.num_workers: more threads than any actor has cores
DNSMOS_PRECISIONS = ("auto", "float32", "bfloat16")  # qc.dnsmos_precision
EXECUTION = ("num_workers", "dnsmos_precision", "own_process", "speculative")  # settings of how QC runs, not what it computes


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class AsrSettings:
    """The speech recogniser: any Whisper checkpoint `from_pretrained` loads (hub id or directory)."""

    __pydantic_config__ = _FORBID

    model: str = "openai/whisper-large-v3-turbo"
    batch_size: int = 8
    max_new_tokens: int = 128
    # greedy: transformers' ASR pipeline otherwise searches 5 beams (its default, after openai's whisper), which
    # multiplies the decoder's cost; QC needs the error rate, not the best transcript a search can find
    num_beams: int = 1

    def __post_init__(self):
        _check(self.batch_size >= 1, f"qc.asr.batch_size must be >= 1, got {self.batch_size}")
        _check(self.max_new_tokens >= 1, f"qc.asr.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.num_beams >= 1, f"qc.asr.num_beams must be >= 1, got {self.num_beams}")


@dataclass(frozen=True)
class Thresholds:
    """Bounds a take must meet; None turns a check off. A metric that is undefined for a take
    (null) is not checked. Sources of the defaults: the README's *Quality control*."""

    __pydantic_config__ = _FORBID

    max_wer: float | None = 0.3
    max_cer: float | None = None
    min_speaker_sim: float | None = 0.75
    min_dnsmos: float | None = 3.0
    min_loudness_lufs: float | None = -40.0
    max_peak_dbfs: float | None = None
    max_clipped_fraction: float | None = 0.001
    max_leading_silence_s: float | None = 1.0
    max_trailing_silence_s: float | None = 1.0
    min_speech_ratio: float | None = 0.5
    min_chars_per_s: float | None = 8.0
    max_chars_per_s: float | None = 25.0
    max_loop_score: float | None = 0.5

    def checks(self) -> list[tuple[str, str, float]]:
        """(metric, "min"/"max", bound) of every check that is on."""
        out = []
        for f in fields(self):
            bound = getattr(self, f.name)
            if bound is not None:
                kind, metric = f.name.split("_", 1)
                out.append((metric, kind, float(bound)))
        return out

    def __post_init__(self):
        for f in fields(self):
            _check(f.name.split("_", 1)[1] in METRICS, f"threshold {f.name} names no metric")


@dataclass(frozen=True)
class CleanupSettings:
    """Edits to an accepted take (both off by default)."""

    __pydantic_config__ = _FORBID

    trim_silence: bool = False
    keep_silence_s: float = 0.16
    loudness_lufs: float | None = None
    max_peak_dbfs: float = -1.0

    def __post_init__(self):
        _check(self.keep_silence_s >= 0, f"qc.cleanup.keep_silence_s must be >= 0, got {self.keep_silence_s}")
        _check(self.max_peak_dbfs <= 0, f"qc.cleanup.max_peak_dbfs must be <= 0, got {self.max_peak_dbfs}")


@dataclass(frozen=True)
class QcSettings:
    """The `qc:` section. enabled: measure every generated turn (off by default: the models are
    large). metrics: the groups to compute (`METRIC_COLUMNS`). max_takes: takes per turn
    before the best failing one is kept. count_failures_as_errors: a script whose kept take
    fails counts toward `job.max_error_rate`. keep_take_audio: rejected takes keep their audio
    in takes/ (their codes are always kept). num_workers: threads that compute the CPU metrics of
    a batch in parallel. dnsmos_precision: DNSMOS's convolutions on a CPU (`DNSMOS_PRECISIONS`;
    auto: bfloat16 where the CPU computes it natively, within 0.01 MOS of float32, checked at
    load; a GPU runs float32). own_process: a generating actor scores in a child process at a
    lower CPU priority (`synth.qc.scorer_process`), not on threads beside its frame loop. speculative: a chain's next turn is generated while its take awaits the
    verdict, and generated again if the take is not kept (`synth.pipeline.verdicts`; the same
    output either way). None of these four changes what is computed beyond float rounding (as
    the device DNSMOS runs on does not): not part of `identity`."""

    __pydantic_config__ = _FORBID

    enabled: bool = False
    metrics: tuple[str, ...] = tuple(METRIC_COLUMNS)
    max_takes: int = 3
    thresholds: Thresholds = field(default_factory=Thresholds)
    asr: AsrSettings = field(default_factory=AsrSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    count_failures_as_errors: bool = False
    keep_take_audio: bool = True
    num_workers: int = 2
    dnsmos_precision: str = "auto"
    own_process: bool = True
    speculative: bool = True

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRIC_COLUMNS]
        _check(not unknown, f"qc.metrics: unknown {unknown}; choose from {list(METRIC_COLUMNS)}")
        _check(self.max_takes >= 1, f"qc.max_takes must be >= 1, got {self.max_takes}")
        _check(1 <= self.num_workers <= MAX_WORKERS,
               f"qc.num_workers must be between 1 and {MAX_WORKERS}, got {self.num_workers}")
        _check(self.dnsmos_precision in DNSMOS_PRECISIONS,
               f"qc.dnsmos_precision must be one of {list(DNSMOS_PRECISIONS)}, got {self.dnsmos_precision!r}")
        _check(not self.cleanup.trim_silence or "timing" in self.metrics,
               "qc.cleanup.trim_silence needs the `timing` metrics (the VAD finds the silence) in qc.metrics")

    def to_dict(self) -> dict:
        """Every setting as plain JSON values: sections as dicts, `metrics` as a list (as plan.json
        and YAML hold them)."""
        return {**asdict(self), "metrics": list(self.metrics)}

    def identity(self) -> dict:
        """The settings that decide what QC computes (a run's plan.json, a rescore's markers): all
        but how it executes (`EXECUTION`)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION}

    def measured(self) -> set[str]:
        """The metric columns this policy computes."""
        return {c for m in self.metrics for c in METRIC_COLUMNS[m]}


def judge(metrics: dict, thresholds: Thresholds, measured: set[str]) -> list[str]:
    """The checks a take fails, as "metric: value > max bound" reasons (empty: it passes).
    Metrics not measured, or undefined (None) for this take, are not checked."""
    reasons = []
    for metric, kind, bound in thresholds.checks():
        value = metrics.get(metric)
        if metric not in measured or value is None:
            continue
        if (kind == "max" and value > bound) or (kind == "min" and value < bound):
            sign = ">" if kind == "max" else "<"
            reasons.append(f"{metric}: {value:.3g} {sign} {kind} {bound:g}")
    return reasons


def reason_metric(reason: str) -> str:
    """The metric a `judge` reason names."""
    return reason.split(":", 1)[0]


def take_score(metrics: dict, reasons: Sequence[str]) -> tuple[float, ...]:
    """Lower is better: fewest failed checks, then lowest WER, then highest speaker similarity,
    then highest DNSMOS (an undefined metric counts as neither good nor bad: 0)."""
    def value(name: str) -> float:
        v = metrics.get(name)
        return 0.0 if v is None else float(v)

    return (float(len(reasons)), value("wer"), -value("speaker_sim"), -value("dnsmos"))


def pick(scores: Sequence[tuple[float, ...]]) -> int:
    """The index of the best take (the earliest among equals)."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def take_seed(seed: int, take: int) -> int:
    """The seed of take `take` (1-based) of a turn whose seed is `seed`: take 1 keeps it, later
    takes get a 31-bit hash of both."""
    if take == 1:
        return seed
    digest = hashlib.sha256(f"{seed}:take:{take}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
