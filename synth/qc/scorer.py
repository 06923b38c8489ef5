"""The scorer: every metric of a batch of takes, each model loaded once and called once per batch.

This module owns `TakeScorer`: built once per actor (or per re-scoring run) from the `qc:`
settings, it loads the models of the metric groups that are on (Whisper, Resemblyzer,
Silero VAD, DNSMOS) and keeps them; `score` takes a batch of takes (clip, intended text,
codes if any, the reference clip of the intended voice if any), resamples each clip to
16 kHz once, and returns one metrics dict per take, keyed by the output's column names
(`METRICS`; None where a metric is off or undefined), the same values as scoring each take
alone (`tests/qc/test_qc_metrics.py` states the tolerance).

How a batch runs: the CPU work (DNSMOS through onnxruntime, the VAD, loudness, the speaker
encoder's spectrograms) is cut into jobs for `qc.num_workers` threads (onnxruntime, torch and
numpy release the GIL in their kernels, and the models are shared, not copied per process),
while the calling thread runs the neural models on the actor's device, each once per batch:
Whisper (batched, greedy, half precision on a GPU), the speaker encoder (every partial of
every clip in one call), and DNSMOS where its graph converts to the GPU. A reference voice
is embedded once per scorer (while its array lives), not once per take. `placement` says
which model runs where; `stats` counts what was scored and what it cost (wall, CPU and GPU
seconds), for the QC stage's rate. A generating actor runs it in a process of its own
(`synth.qc.scorer_process`). It knows nothing about outputs, the policy's decision or Ray.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from synth.qc import quality, repetition
from synth.qc.asr import ASR_RATE_HZ, Transcriber, error_rates
from synth.qc.policy import METRICS, QcSettings
from synth.qc.speaker import SpeakerEncoder, cosine
from synth.qc.timing import VoiceActivity

MAX_REFERENCES = 256  # reference embeddings a scorer keeps (a run's voices, a script's speakers)
JOB_CLIPS = 4  # at most this many clips per DNSMOS or spectrogram job: small jobs keep every worker busy to the end


@dataclass(frozen=True)
class Take:
    """One clip to score. audio: [num_samples] float32 mono at the scorer's rate; codes:
    [num_frames, num_codebooks] or None (a dataset without codes); reference: the intended
    voice's clip at the same rate, or None."""

    audio: np.ndarray
    text: str
    codes: np.ndarray | None = None
    reference: np.ndarray | None = None


@dataclass
class ScorerStats:
    """What a scorer has done: takes, their audio seconds, and the seconds spent scoring them:
    wall (`busy_s`), CPU time of the scorer's own threads (`cpu_s`: the calling thread's and its
    workers'; on CPU its torch and onnxruntime calls run on those threads) and the time its calls
    held a GPU (`device_s`, synchronised; 0 on CPU)."""

    takes: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0
    cpu_s: float = 0.0
    device_s: float = 0.0


class TakeScorer:
    """The QC metrics of takes at `sample_rate_hz`; see the module docstring."""

    def __init__(self, settings: QcSettings, sample_rate_hz: int, *, device: str = "cpu",
                 transcriber: Transcriber | None = None):
        """transcriber: a loaded speech recogniser to use instead of loading `settings.asr.model`."""
        self.settings = settings
        self.sample_rate_hz = sample_rate_hz
        self.device = device
        self.groups = set(settings.metrics)
        self.num_workers = settings.num_workers
        self.stats = ScorerStats()
        self._asr: Transcriber | None = transcriber
        self._speaker: SpeakerEncoder | None = None
        self._vads: list[VoiceActivity] = []  # one per worker: the VAD keeps state between its calls
        self._dnsmos: quality.Dnsmos | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._references: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}  # id -> (reference, embedding)
        self._lock = threading.Lock()
        self._workers_cpu_s = 0.0  # CPU seconds of every job the workers ran

    def load(self) -> "TakeScorer":
        """Load every model the settings need now (else on first use) and start the workers; returns self."""
        if "asr" in self.groups and self._asr is None:
            asr = self.settings.asr
            self._asr = Transcriber(asr.model, device=self.device, batch_size=asr.batch_size,
                                    max_new_tokens=asr.max_new_tokens, num_beams=asr.num_beams)
        if "speaker" in self.groups and self._speaker is None:
            self._speaker = SpeakerEncoder(device=self.device)
        if "timing" in self.groups and not self._vads:
            self._vads = [VoiceActivity() for _ in range(self.num_workers)]
        if "dnsmos" in self.groups and self._dnsmos is None:
            self._dnsmos = quality.Dnsmos(threads=1, device=self.device, precision=self.settings.dnsmos_precision)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="synth-qc")
        return self

    def warm_up(self) -> "TakeScorer":
        """Score one made-up take (1 s of noise, a reference voice) and forget it: the models' first
        calls (Whisper's generate, the speaker encoder, the VAD: 1 to 1.5 s on the CPU) are paid at
        load, not by the first batch beside generation. The stats do not count it; returns self."""
        clip = (0.1 * np.random.default_rng(0).standard_normal(self.sample_rate_hz)).astype(np.float32)
        self.score([Take(clip, "warm up", None, clip.copy())])
        self.stats = ScorerStats()
        self._references.clear()
        return self

    def close(self) -> None:
        """Stop the worker threads (the models stay loaded; `load` starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    @property
    def placement(self) -> dict[str, str]:
        """Where each model of the metrics that are on runs."""
        device = self.device
        where = {"asr": f"{device} (Whisper{', float16' if device != 'cpu' else ''}, batched)",
                 "speaker": f"{device} (Resemblyzer, one call per batch; spectrograms on the workers)",
                 "dnsmos": self._dnsmos.placement if self._dnsmos is not None else "cpu (onnxruntime)",
                 "timing": "cpu workers (Silero VAD, batched)", "level": "cpu workers (pyloudnorm)",
                 "repetition": "cpu (from the codes)"}
        return {group: where[group] for group in where if group in self.groups}

    def _at_16k(self, clip: np.ndarray) -> np.ndarray:
        if self.sample_rate_hz == ASR_RATE_HZ:
            return np.asarray(clip, np.float32)
        import soxr  # here: a scorer at 16 kHz (the device check's) needs no resampler

        return soxr.resample(np.asarray(clip, np.float32), self.sample_rate_hz, ASR_RATE_HZ).astype(np.float32)

    def score(self, takes: Sequence[Take]) -> list[dict]:
        """One dict of every metric column per take (None: off or undefined), in order. One caller
        at a time (the workers are shared by its batch's jobs)."""
        if self.device != "cpu":
            return self._score(takes)
        with _torch_threads(1):  # on CPU the workers are the parallelism; see `_torch_threads`
            return self._score(takes)

    def _score(self, takes: Sequence[Take]) -> list[dict]:
        t0, c0, w0 = time.perf_counter(), time.thread_time(), self._workers_cpu_s
        self.load()
        clips = [self._at_16k(t.audio) for t in takes]
        rows: list[dict] = [dict.fromkeys(METRICS) for _ in takes]
        cpu = self._cpu_jobs(takes, clips)  # the workers start on them now
        if "asr" in self.groups:
            assert self._asr is not None
            texts = self._on_device(self._asr.transcribe, clips)
            for row, take, text in zip(rows, takes, texts):
                row["asr_text"] = text
                row["wer"], row["cer"] = error_rates(take.text, text)
        if "speaker" in self.groups:
            self._speaker_sims(takes, cpu.pop("partials"), rows)
        if self._dnsmos is not None and self._dnsmos.module is not None:
            scores = self._on_device(self._dnsmos.ovrl_batch, [self._dnsmos.windows_of(c) for c in clips])
            for row, value in zip(rows, scores):
                row["dnsmos"] = value
        for jobs in cpu.values():
            for indices, future in jobs:
                for i, value in zip(indices, future.result()):
                    rows[i].update(value)
        if "repetition" in self.groups:
            for row, take in zip(rows, takes):
                row["loop_score"] = repetition.loop_score(take.codes) if take.codes is not None else None
        self._count(takes, time.perf_counter() - t0, time.thread_time() - c0 + self._workers_cpu_s - w0)
        return rows

    # -- the workers' jobs ------------------------------------------------------------

    def _cpu_jobs(self, takes: Sequence[Take], clips: list[np.ndarray]) -> dict[str, list[tuple[list[int], Future]]]:
        """Submit the batch's CPU work: each job covers some takes and returns one dict (or value) per take."""
        assert self._pool is not None
        jobs: dict[str, list[tuple[list[int], Future]]] = {}

        def submit(fn, *args) -> Future:
            assert self._pool is not None
            return self._pool.submit(self._timed, fn, *args)

        by_length = sorted(range(len(takes)), key=lambda i: len(clips[i]))  # like lengths batch with little padding
        # a small batch (a chain's take or two) spread over every worker: its verdict waits for the slowest job
        job_clips = max(1, min(JOB_CLIPS, -(-len(takes) // self.num_workers)))
        if "timing" in self.groups:
            groups = _balanced(by_length, [len(c) for c in clips], len(self._vads))
            jobs["timing"] = [(g, submit(_timing_job, vad, [clips[i] for i in g], [takes[i].text for i in g]))
                              for vad, g in zip(self._vads, groups)]
        if "dnsmos" in self.groups and self._dnsmos is not None and self._dnsmos.module is None:
            jobs["dnsmos"] = [(g, submit(_dnsmos_job, self._dnsmos, [clips[i] for i in g]))
                              for g in _chunks(by_length, job_clips)]
        if "level" in self.groups:
            jobs["level"] = [(g, submit(_level_job, [takes[i].audio for i in g], self.sample_rate_hz))
                             for g in _chunks(by_length, max(1, -(-len(takes) // self.num_workers)))]
        if "speaker" in self.groups:
            assert self._speaker is not None
            spectrograms = self._speaker.partials
            with_reference = [i for i in range(len(takes)) if takes[i].reference is not None]
            jobs["partials"] = [(g, submit(lambda cs: [spectrograms(c) for c in cs], [clips[i] for i in g]))
                                for g in _chunks(with_reference, job_clips)]
        return jobs

    def _speaker_sims(self, takes: Sequence[Take], partial_jobs, rows: list[dict]) -> None:
        """`speaker_sim` of every take with a reference: the takes' and the new references' partials
        through the encoder in one call; a reference seen before keeps its embedding."""
        assert self._speaker is not None
        partials: list = [None] * len(takes)
        for indices, future in partial_jobs:
            for i, p in zip(indices, future.result()):
                partials[i] = p
        new = {id(t.reference): t.reference for t in takes
               if t.reference is not None and self._references.get(id(t.reference), (None,))[0] is not t.reference}
        refs = [self._speaker.partials(self._at_16k(r)) for r in new.values()]
        embeds = self._on_device(self._speaker.embed_batch, partials + refs)
        if len(self._references) + len(new) > MAX_REFERENCES:
            self._references.clear()
        for (key, reference), embed in zip(new.items(), embeds[len(takes):]):
            self._references[key] = (reference, embed)  # the array is kept: its id cannot be reused meanwhile
        for row, take, embed in zip(rows, takes, embeds[: len(takes)]):
            if take.reference is not None:
                row["speaker_sim"] = cosine(embed, self._references[id(take.reference)][1])

    # -- costs ------------------------------------------------------------------------

    def _on_device(self, fn: Callable, *args):
        """fn(*args), its time on a GPU counted (synchronised before and after; nothing on CPU)."""
        if self.device == "cpu":
            return fn(*args)
        import torch

        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn(*args)
        torch.cuda.synchronize()
        self.stats.device_s += time.perf_counter() - t0
        return out

    def _timed(self, fn: Callable, *args):
        """A worker's job, its CPU time counted."""
        c0 = time.thread_time()
        try:
            return fn(*args)
        finally:
            with self._lock:
                self._workers_cpu_s += time.thread_time() - c0

    def _count(self, takes: Sequence[Take], wall_s: float, cpu_s: float) -> None:
        self.stats.takes += len(takes)
        self.stats.audio_s += sum(len(t.audio) for t in takes) / self.sample_rate_hz
        self.stats.busy_s += wall_s
        self.stats.cpu_s += cpu_s


@contextmanager
def _torch_threads(n: int):
    """torch's intra-op threads set to `n` inside (process-wide), restored after. On CPU each model
    call of the scorer runs on one thread beside `qc.num_workers` others: torch's own threads on top
    spin-wait for cores the workers hold (the speaker encoder ran 20x slower with 2 threads than with
    1 on the 2-core box). The frame loop waits for the scorer on CPU, so it loses nothing meanwhile."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timing_job(vad: VoiceActivity, clips: list[np.ndarray], texts: list[str]) -> list[dict]:
    return [{"leading_silence_s": t.leading_silence_s, "trailing_silence_s": t.trailing_silence_s,
             "speech_ratio": t.speech_ratio, "chars_per_s": t.chars_per_s} for t in vad.timing_batch(clips, texts)]


def _dnsmos_job(dnsmos: quality.Dnsmos, clips: list[np.ndarray]) -> list[dict]:
    return [{"dnsmos": v} for v in dnsmos.ovrl_clips(clips)]


def _level_job(audios: list[np.ndarray], rate_hz: int) -> list[dict]:
    return [{"loudness_lufs": quality.loudness_lufs(a, rate_hz), "peak_dbfs": quality.peak_dbfs(a),
             "clipped_fraction": quality.clipped_fraction(a)} for a in audios]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _balanced(ordered: list[int], weights: list[int], parts: int) -> list[list[int]]:
    """`ordered` cut into at most `parts` consecutive groups of about equal total weight (none empty)."""
    total, groups, current, acc = max(1, sum(weights[i] for i in ordered)), [], [], 0
    for i in ordered:
        current.append(i)
        acc += weights[i]
        if acc >= total * (len(groups) + 1) / parts and len(groups) < parts - 1:
            groups.append(current)
            current = []
    return [g for g in groups + [current] if g]
