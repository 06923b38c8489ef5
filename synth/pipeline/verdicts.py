"""One chain's takes on their way through QC, and the turns generated ahead of their verdicts.

This module owns `ChainFlight`: for one chain (`synth.pipeline.chain`) with QC on, the takes
that finished and await their verdict, in chain order, and the speculative continuation
(`qc.speculative`): when a take finishes, the chain's next turn is requested at once
(`speculative=True`), conditioned on the take as it would be accepted (`Retakes.as_accepted`:
as stored, loudness-normalised if configured), on the assumption that it will be kept; and
so on past takes whose verdicts are still to come; or, when the take is likely to fail, the
turn's next take (the same request with the next take's seed, as the retake loop would ask
for it). Verdicts are applied in chain order
(`decide`), through `Retakes.on_take` exactly as the plain order applies them: a kept take
whose continuation was speculated lets that continuation stand; a retake, or another take
kept, discards what was speculated past it (the requests to cancel, the finished takes'
frames counted in `QcCounts`), puts the chain back as it was at the take (`Chain.restore`)
and goes on from the verdict. A take's reference voice for scoring is the one the plain
order would give it (the speakers' first kept turns, those still awaiting a verdict taken as
kept). So rows, takes, seeds and codes are those of the plain order. Speculation is a bet that
the take will be kept, or that it will not; `KeepRate` says which: the next turn on take N of a turn while at
least half of the recent verdicts on take N kept it, else the next take (every take failing, as
with the offline random models, makes the chain retake ahead; a run whose takes pass speculates
on every turn). It
changes what is generated ahead, never the output. It knows nothing about
threads, parts or outputs: the caller (the shard worker, the benchmark) holds one lock over
it, queues the takes for scoring and carries out what `decide` returns.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from synth.engine.interface import GenerationRequest, GenerationResult
from synth.pipeline.chain import Chain, ChainState
from synth.pipeline.context_plan import ContextPlan
from synth.pipeline.retakes import Accepted, QcCounts, Retakes
from synth.qc.scorer import Take


@dataclass
class PendingTake:
    """A finished take awaiting its verdict.

    request, turn, plan: its turn's request (the chain's: take 1's id and seed), index and context.
    engine_id: the id it was generated under (a retake's own). result: as stored; gain_db: what that took.
    before: the chain when the take came (at its turn), to go back to.
    assumed: the take as it would be accepted, that the chain went on from (None: not speculated on).
    skipped: turns the speculation passed over (they become error rows if the take is kept).
    ends: the speculation found no turn left to generate.
    """

    request: GenerationRequest
    turn: int
    plan: ContextPlan | None
    engine_id: str
    result: GenerationResult
    gain_db: float | None
    before: ChainState
    number: int = 1  # its take number
    metrics: dict | None = None
    assumed: GenerationResult | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    ends: bool = False
    discarded: bool = False  # thrown away before its verdict: no need to score it


@dataclass
class Verdicts:
    """What applying a chain's verdicts gave, for the caller to carry out (in this order): requests
    to cancel, kept takes with their turn, turns skipped (error rows), requests to submit, and
    whether the chain is done."""

    cancel: list[str] = field(default_factory=list)
    accepted: list[tuple[PendingTake, Accepted]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    submit: list[GenerationRequest] = field(default_factory=list)
    done: bool = False


class KeepRate:
    """How often a turn's newest take was the one kept, by take number, over the last `window`
    verdicts on followed turns (a worker's chains share one): speculating on take N pays while
    that rate is at least `min_rate` (with no verdict seen yet, it is assumed to)."""

    def __init__(self, min_rate: float = 0.5, window: int = 64):
        if not 0 <= min_rate <= 1:
            raise ValueError(f"min_rate must be within [0, 1], got {min_rate}")
        self.min_rate, self.window = min_rate, window
        self._kept: dict[int, deque] = {}  # take number -> recent outcomes (True: that take was kept)

    def worth_it(self, take: int) -> bool:
        seen = self._kept.get(take)
        return not seen or sum(seen) >= self.min_rate * len(seen)

    def record(self, take: int, kept: bool) -> None:
        self._kept.setdefault(take, deque(maxlen=self.window)).append(kept)


class ChainFlight:
    """One chain's takes awaiting verdicts, and its speculation; see the module docstring."""

    def __init__(self, chain: Chain, retakes: Retakes, *, speculate: bool, keep_rate: KeepRate | None = None):
        """keep_rate: when to bet on a take (None: on every take)."""
        self.chain, self.retakes = chain, retakes
        self.speculate_turns = speculate and retakes.can_speculate  # the next turn, on a take as it would be kept
        self.speculate_takes = speculate and keep_rate is not None  # the next take, on a take that would fail
        self.keep_rate = keep_rate
        self.pending: list[PendingTake] = []  # in chain order: the head is the next verdict to apply
        self.in_flight: str | None = None  # the request generating now (a chain generates one at a time)
        self.in_flight_speculative = False

    def first(self, skip: Callable[[int, str], None]) -> GenerationRequest | None:
        """The chain's first request (None: nothing to generate)."""
        return self._issue(self.chain.next_request(skip))

    def on_take(self, engine_id: str, result: GenerationResult, gain_db: float | None,
                counts: QcCounts) -> tuple[PendingTake, Take, GenerationRequest | None]:
        """A finished take (its audio as stored): its record, the take to score, and what is requested
        ahead of its verdict (None: nothing): the chain's next turn when the take is likely to be
        kept, else the turn's next take."""
        assert engine_id == self.in_flight, (engine_id, self.in_flight)
        chain, request = self.chain, self.chain.request
        assert request is not None
        take = Take(result.audio, request.text, result.codes, self._voice(request.speaker))
        same_turn = self.pending and self.pending[-1].request.request_id == request.request_id  # a retake ahead
        number = self.pending[-1].number + 1 if same_turn else self.retakes.take_number(request)
        pending = PendingTake(request, chain.turn, chain.plan, engine_id, result, gain_db, chain.snapshot(),
                              number=number)
        self.pending.append(pending)
        self.in_flight = None
        bet = self.keep_rate is None or self.keep_rate.worth_it(pending.number)
        if not bet and self.speculate_takes and number < self.retakes.settings.max_takes:
            counts.speculative_turns += 1  # the verdict will likely ask for it: the same request, the next seed
            return pending, take, self._issue(replace(self.retakes.retake(request, number + 1), speculative=True))
        if not (self.speculate_turns and request.followed and bet):
            return pending, take, None
        pending.assumed = self.retakes.as_accepted(request, result)
        chain.add_result(pending.assumed)
        ahead = chain.next_request(lambda turn, reason: pending.skipped.append((turn, reason)))
        if ahead is None:
            pending.ends = True
            return pending, take, None
        counts.speculative_turns += 1
        return pending, take, self._issue(replace(ahead, speculative=True))

    def decide(self, counts: QcCounts, script_id: str) -> Verdicts:
        """Apply the verdicts that can be applied: the head's, while it is scored, in chain order."""
        out = Verdicts()
        while self.pending and self.pending[0].metrics is not None:
            head = self.pending.pop(0)
            outcome = self.retakes.on_take(self.chain, head.result, counts, script_id, gain_db=head.gain_db,
                                           metrics=head.metrics, request=head.request, turn=head.turn)
            # the newest take (this one) kept?
            kept_this = isinstance(outcome, Accepted) and outcome.columns["take"] == outcome.columns["num_takes"]
            if self.keep_rate is not None:
                self.keep_rate.record(head.number, kept_this)
            if not isinstance(outcome, Accepted) and self._generated_ahead(outcome.request_id):
                continue  # the retake the verdict asks for is under way (or done) already: it stands
            if isinstance(outcome, Accepted):
                out.accepted.append((head, outcome))
                if head.assumed is not None and kept_this:  # what the chain went on from: it stands
                    assert np.array_equal(head.assumed.audio, outcome.result.audio)
                    out.skipped += head.skipped
                    out.done = head.ends
                    continue
            self._roll_back(head, out, counts)
            if isinstance(outcome, Accepted):
                self.chain.add_result(outcome.result)
                request = self._issue(self.chain.next_request(lambda turn, reason: out.skipped.append((turn, reason))))
            else:
                request = self._issue(outcome)  # the turn's next take
            if request is None:
                out.done = True
            else:
                out.submit.append(request)
            return out
        return out

    def _generated_ahead(self, request_id: str) -> bool:
        """Whether the request was made ahead of the verdict that asks for it (then it is no longer a bet)."""
        if self.pending:
            return self.pending[0].engine_id == request_id
        if self.in_flight == request_id:
            self.in_flight_speculative = False
            return True
        return False

    def _issue(self, request: GenerationRequest | None) -> GenerationRequest | None:
        self.in_flight = request.request_id if request is not None else None
        self.in_flight_speculative = request is not None and request.speculative
        return request

    def _roll_back(self, head: PendingTake, out: Verdicts, counts: QcCounts) -> None:
        """Discard what was speculated past `head` and put the chain back as it was at its take."""
        for later in self.pending:  # finished speculative takes: generated for nothing
            later.discarded = True
            counts.speculative_frames_discarded += later.result.num_frames
        counts.speculative_discarded += len(self.pending)
        if self.in_flight is not None and self.in_flight_speculative:
            out.cancel.append(self.in_flight)
            counts.speculative_discarded += 1
        self.pending, self.in_flight = [], None
        self.chain.restore(head.before)

    def _voice(self, speaker: int) -> np.ndarray | None:
        """The speaker's reference as the plain order would have it when this take is scored: every
        take awaiting a verdict is an ancestor of it, taken as kept."""
        voice = self.retakes.voice(self.chain, speaker)
        if voice is not None:
            return voice
        for pending in self.pending:
            if pending.assumed is not None and pending.request.speaker == speaker and pending.assumed.num_frames:
                return pending.assumed.audio
        return None
