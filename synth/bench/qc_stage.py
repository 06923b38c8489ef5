"""The QC stage in the benchmark: every finished turn scored, and what that costs the engine.

This module owns `synth bench --qc`'s side of the benchmark (`synth.bench.throughput` runs
the engines): `QcStage`, an engine's `on_result` that scores every finished turn with every
QC metric (`synth.qc.scorer.TakeScorer`, in its own process as a run's actor has it unless
`--qc-process no`: `synth.qc.scorer_process`; each turn's audio as the output stores it, each
speaker's first turn the reference voice of its later ones, as the retake loop does; no
retakes), in one of two ways:

- `inline`: each batch of turns the engine finishes together is scored before the frame loop
  goes on, as a QC run scores its takes today (the retake decision needs the verdict);
- `beside`: finished turns queue for a thread that has them scored while generation goes on, all
  that queued while it was busy in one batch (the engine mostly finishes rows one or two at a
  time, and a Whisper call costs its decoding steps whatever its batch), and the run ends when
  the last is scored: what flat rows will get once the engine takes requests from another
  thread (issue 22's QC pipeline; no row here needs a verdict to go on).

and `QcChains`: dialogues run as chains (`synth.pipeline.chain`) with QC deciding every take
as a run does: the pipeline's QC stage (`synth.pipeline.qc_stage`) scores takes beside
generation, each chain's verdicts are applied in order by `synth.pipeline.verdicts` (retakes
up to `max_takes`), with or without speculative next turns (`qc.speculative`).

And the issue-22 table: throughput with QC off and on (flat rows; 4-turn chains with
speculation off and on), the stage's CPU- and GPU-seconds per audio second, the seconds the
engine waited on QC, and the speculative frames thrown away. It imports neither Ray nor
pydantic. It knows nothing about outputs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

QC_MODES = ("inline", "beside")


@dataclass
class QcCost:
    """What scoring one run's turns cost: turns, audio seconds, the scorer's wall, CPU and GPU
    seconds (`ScorerStats`), and the seconds the frame loop spent waiting on it."""

    takes: int = 0
    audio_s: float = 0.0
    busy_s: float = 0.0
    cpu_s: float = 0.0
    device_s: float = 0.0
    waited_s: float = 0.0
    batches: int = 0  # scorer calls the turns took
    speculative_turns: int = 0  # chains: turns generated ahead of their parent's verdict
    speculative_discarded: int = 0  # of those, thrown away (the parent retaken or another take kept)
    discarded_frames: int = 0  # their frames: finished takes thrown away, and cancelled rows' (the engine's count)

    @property
    def cpu_per_audio_s(self) -> float:
        return self.cpu_s / max(self.audio_s, 1e-9)

    @property
    def device_per_audio_s(self) -> float:
        return self.device_s / max(self.audio_s, 1e-9)


class QcStage:
    """An engine's `on_result` (with `prepare`) that scores every finished turn; see the module docstring."""

    def __init__(self, scorer, requests, mode: str = "inline"):
        if mode not in QC_MODES:
            raise ValueError(f"QC mode {mode!r}: expected one of {QC_MODES}")
        self.scorer, self.mode = scorer, mode
        self.request = {r.request_id: r for r in requests}
        self.references: dict[int, object] = {}  # speaker -> their first finished turn's audio, as stored
        self.waited_s = 0.0
        self.batches: list[int] = []  # turns per scorer call
        self.takes: list = []  # every take it was handed (`stage_alone` scores them again)
        self._start = asdict(scorer.stats)
        self._queue: list = []
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="synth-bench-qc", daemon=True) \
            if mode == "beside" else None
        if self._thread is not None:
            self._thread.start()

    def _take(self, result):
        from synth.pipeline.audio_io import as_stored
        from synth.qc.scorer import Take

        request = self.request[result.request_id]
        audio, _ = as_stored(result.audio)
        reference = self.references.get(request.speaker)
        if reference is None and len(audio):
            self.references[request.speaker] = audio
        return Take(audio, request.text, result.codes, reference)

    def prepare(self, results) -> None:
        t0 = time.perf_counter()
        takes = [self._take(r) for r in results]
        self.takes += takes
        if self._thread is None:
            self.batches.append(len(takes))
            self.scorer.score(takes)
        else:
            with self._ready:
                self._queue.extend(takes)
                self._ready.notify()
        self.waited_s += time.perf_counter() - t0

    def _drain(self) -> None:
        """The beside thread: score everything queued, in one call, until closed and empty."""
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._queue or self._closed)
                takes, self._queue = self._queue, []
                if not takes:
                    return
            self.batches.append(len(takes))
            self.scorer.score(takes)

    def __call__(self, result) -> None:
        return None

    def finish(self) -> QcCost:
        """Wait for every batch still being scored (the run's end waits on it); what the run's QC cost."""
        t0 = time.perf_counter()
        if self._thread is not None:
            with self._ready:
                self._closed = True
                self._ready.notify()
            self._thread.join()
        self.waited_s += time.perf_counter() - t0
        now = asdict(self.scorer.stats)
        return QcCost(**{k: now[k] - self._start[k] for k in self._start}, waited_s=self.waited_s,
                      batches=len(self.batches))


class QcChains:
    """Dialogues as chains with QC on, as a run makes them (see the module docstring): the engine's
    `on_result` queues each take for the QC stage; the stage's thread applies the verdicts and
    hands retakes and next turns to the engine (`submit`, `cancel`)."""

    def __init__(self, engine, scorer, *, speculate: bool, max_takes: int, max_queued: int = 64):
        from synth.pipeline.retakes import QcCounts, Retakes

        self.engine, self.scorer = engine, scorer
        settings = replace(scorer.settings, enabled=True, max_takes=max_takes, speculative=speculate)
        self.retakes = Retakes(settings, scorer, samples_per_frame=engine.samples_per_frame,
                               encode_audio=lambda audio, key: b"")
        self.speculate, self.max_queued = speculate, max_queued
        self.counts = QcCounts()
        self.lock = threading.RLock()
        self.flights: dict = {}  # request id in flight -> its chain's ChainFlight
        self.live = 0  # chains not yet done
        self.judged_frames = 0  # frames of every take judged (kept or retaken)
        self.stage = None

    def run(self, dialogues, sampling, context_from: str = "codes", low_water: float | None = None) -> list:
        """Generate `dialogues` (lists of requests) as chains; every result the engine delivered."""
        from synth.pipeline.chain import Chain, ChainTurn
        from synth.pipeline.context_plan import SegmentCost
        from synth.pipeline.qc_stage import QcStage as Stage
        from synth.pipeline.verdicts import ChainFlight, KeepRate

        cost = SegmentCost(self.engine)
        keep_rate = KeepRate()  # as a worker bets on its takes
        first = []
        for turns in dialogues:
            chain = Chain([ChainTurn(r.request_id, r.speaker, r.text, max_frames=r.max_frames, seed=r.seed)
                           for r in turns], self.engine, cost, context_from=context_from, context_low_water=low_water)
            self.retakes.start_chain(chain)
            flight = ChainFlight(chain, self.retakes, speculate=self.speculate, keep_rate=keep_rate)
            requests = flight.first(_does_not_fit, self.counts)
            self.flights.update((r.request_id, flight) for r in requests)
            first += requests
        self.live = len(dialogues)
        self.stage = Stage(self._score, self._apply, max_queued=self.max_queued,
                           on_error=lambda e: self.engine.close_submissions())
        self.engine.open_submissions()
        try:
            results = self.engine.run(first, sampling, on_result=self)
        finally:
            if self.live:
                self.engine.close_submissions()
            self.stage.close(discard=True)
        if self.stage.error is not None:
            raise self.stage.error
        return results

    def __call__(self, result) -> None:
        from synth.pipeline.audio_io import as_stored

        with self.lock:
            flight = self.flights.pop(result.request_id, None)
            if flight is None:  # a cancelled speculative turn already on its way
                self.counts.speculative_frames_discarded += result.num_frames
                return None
            audio, gain_db = as_stored(result.audio)
            ready, ahead = flight.on_take(result.request_id, replace(result, audio=audio), gain_db, self.counts)
            if ahead:
                self.flights.update((r.request_id, flight) for r in ahead)
                self.engine.submit(ahead)
        for pending, take in ready:
            self.stage.put((flight, pending, take))
        return None

    def _score(self, items: list) -> list:
        from synth.pipeline.verdicts import score_wanted

        return score_wanted(self.scorer, [(pending, take) for _, pending, take in items])

    def _apply(self, items: list, metrics: list) -> None:
        with self.lock:
            touched = {}
            for (flight, pending, _), m in zip(items, metrics):
                if m is not None and not pending.discarded:
                    pending.metrics = m
                    touched[id(flight)] = flight
            for flight in touched.values():
                verdicts = flight.decide(self.counts, "bench")
                for request_id in verdicts.cancel:
                    self.engine.cancel(request_id, self._cancelled)
                    self.flights.pop(request_id, None)
                self.judged_frames += sum(accepted.result.num_frames + sum(t["num_frames"] for t in accepted.rejected)
                                          for _, accepted in verdicts.accepted)
                for request in verdicts.submit:
                    self.flights[request.request_id] = flight
                if verdicts.submit:
                    self.engine.submit(verdicts.submit)
                if verdicts.done:
                    self.retakes.end_chain(flight.chain)
                    self.live -= 1
                    if self.live == 0:
                        self.engine.close_submissions()
            submit = []  # takes generating alone whose bet has turned since: their siblings, as a run does
            for flight in {id(f): f for f in self.flights.values()}.values():
                for request in flight.bet_again(self.counts):
                    self.flights[request.request_id] = flight
                    submit.append(request)
            if submit:
                self.engine.submit(submit)


    def _cancelled(self, frames: int) -> None:
        with self.lock:
            self.counts.speculative_frames_discarded += frames


def _does_not_fit(turn: int, reason: str) -> None:
    raise ValueError(f"a dialogue's turn {turn} cannot be generated ({reason}): raise --max-positions")


def stage_alone(scorer, takes) -> dict:
    """The stage alone: `takes` scored again in one call (no engine beside it); its cost, and how
    many cores it kept busy (CPU seconds over wall seconds: the workers' parallelism)."""
    before = asdict(scorer.stats)
    scorer.score(takes)
    now = asdict(scorer.stats)
    cost = QcCost(**{k: now[k] - before[k] for k in before}, batches=1)
    return {**asdict(cost), "cpu_per_audio_s": cost.cpu_per_audio_s, "device_per_audio_s": cost.device_per_audio_s,
            "cores_busy": cost.cpu_s / max(cost.busy_s, 1e-9)}


def build_scorer(asr_model: str, build_dir: Path, sample_rate_hz: int, device: str, num_workers: int,
                 metrics: tuple[str, ...] | None = None, own_process: bool = True):
    """The QC scorer with `metrics` (default every group) on and its models loaded (outside any timing):
    in its own process (`ScorerProcess`, as a run's actor scores) or, with `own_process` off, in this one."""
    from synth.qc.policy import AsrSettings, QcSettings
    from synth.qc.scorer import TakeScorer
    from synth.qc.scorer_process import ScorerProcess

    if asr_model == "tiny":
        from synth.qc.tiny_whisper import build_tiny_whisper

        asr_model = str(build_tiny_whisper(build_dir / "tiny-whisper"))
    settings = QcSettings(enabled=True, asr=AsrSettings(model=asr_model), num_workers=num_workers,
                          **({"metrics": metrics} if metrics else {}))
    if own_process:
        return ScorerProcess(settings, sample_rate_hz, device=device).load()
    return TakeScorer(settings, sample_rate_hz, device=device).load().warm_up()


def print_qc(rows, scorer, alone: dict | None = None) -> None:
    """The issue-22 table of the rows `synth bench --qc` ran, the stage alone (`stage_alone`), and
    where each QC model ran."""
    fast = [r for r in rows if r.engine == "fast"]
    print("\n| workload | slots | QC | frames/s | / QC off | QC CPU-s per audio s | QC GPU-s per audio s | "
          "engine waited on QC s | QC wall s | turns scored (audio s) in calls | discarded speculative frames |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for row in fast:
        if row.qc is None:
            print(f"| flat | {row.setting.split(' ')[0]} | off | {row.fps:.1f} | 1 | - | - | 0 | - | - | - |")
    for row in (r for r in fast if r.qc is not None and "chains" not in r.setting):
        off = next((r for r in fast if r.qc is None and r.setting == row.setting.split(", QC on")[0]), None)
        cost = QcCost(**row.qc)
        ratio = f"{row.fps / off.fps:.2f}" if off is not None else "-"
        print(f"| flat | {row.setting.split(' ')[0]} | on, {row.setting.split('QC on, ')[-1]} | {row.fps:.1f} | {ratio} | "
              f"{cost.cpu_per_audio_s:.4f} | {cost.device_per_audio_s:.4f} | {cost.waited_s:.1f} | {cost.busy_s:.1f} | "
              f"{cost.takes} ({cost.audio_s:.1f}) in {cost.batches} | - |")
    for row in (r for r in fast if "chains" in r.setting):
        slots = row.setting.split(" ")[0]
        flat_on = next((r for r in fast if r.qc is not None and "chains" not in r.setting
                        and r.setting.startswith(f"{slots} slots") and r.setting.endswith("beside")), None)
        cost = QcCost(**row.qc)
        ratio = f"{row.fps / flat_on.fps:.2f} of flat QC on" if flat_on is not None else "-"
        speculation = "on" if row.setting.endswith("speculation on") else "off"
        print(f"| 4-turn chains, speculation {speculation} | {slots} | on, beside, retakes | {row.fps:.1f} | {ratio} | "
              f"{cost.cpu_per_audio_s:.4f} | {cost.device_per_audio_s:.4f} | {cost.waited_s:.1f} | {cost.busy_s:.1f} | "
              f"{cost.takes} ({cost.audio_s:.1f}) in {cost.batches} | {cost.discarded_frames} "
              f"({cost.speculative_discarded}/{cost.speculative_turns} turns) |")
    if alone is not None:
        print(f"\nQC stage alone (the last run's {alone['takes']} turns, {alone['audio_s']:.1f} s of audio, in one call): "
              f"{alone['cpu_per_audio_s']:.4f} CPU-s and {alone['device_per_audio_s']:.4f} GPU-s per audio s, "
              f"{alone['busy_s']:.1f} s wall ({alone['cores_busy']:.1f} cores busy on average)")
    from synth.qc.scorer_process import NICE, ScorerProcess

    scorer_at = f"in its own process at nice +{NICE}" if isinstance(scorer, ScorerProcess) else "on threads of this process"
    print("\nQC models: " + "; ".join(f"{group}: {where}" for group, where in scorer.placement.items())
          + f"; {scorer.num_workers} worker threads, the scorer {scorer_at}")
