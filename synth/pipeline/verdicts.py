"""One chain's takes on their way through QC, and the turns generated ahead of their verdicts.

This module owns `ChainFlight`: for one chain (`synth.pipeline.chain`) with QC on, the takes
that finished and await their verdict, in chain order, and the speculative continuation
(`qc.speculative`): when a take finishes, the chain's next turn is requested at once
(`speculative=True`), conditioned on the take as it would be accepted (`Retakes.as_accepted`:
as stored, loudness-normalised if configured), on the assumption that it will be kept; and
so on past takes whose verdicts are still to come; or, when the take is likely to fail, the
turn's next take (the same request with the next take's seed, as the retake loop would ask
for it); where the bet is placed before the take is even generated (its take number has been
failing), the turn's next takes are requested beside it from the start, so they are scored
together. Verdicts are applied in chain order
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
from typing import Callable, Sequence

import numpy as np

from synth.engine.interface import GenerationRequest, GenerationResult
from synth.pipeline.chain import Chain, ChainState
from synth.pipeline.context_plan import ContextPlan
from synth.pipeline.record import take_id
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


def score_wanted(scorer, queued: Sequence[tuple[PendingTake, Take]]) -> list[dict | None]:
    """Metrics of queued takes in one batch (`TakeScorer.score`); None for those discarded while they
    waited (a roll back), which are not scored."""
    wanted = [i for i, (pending, _) in enumerate(queued) if not pending.discarded]
    metrics: list[dict | None] = [None] * len(queued)
    for i, m in zip(wanted, scorer.score([queued[i][1] for i in wanted]) if wanted else []):
        metrics[i] = m
    return metrics


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
        # the requests generating now, in chain order: one, or a turn's takes side by side (the bet said the
        # first would fail); those made ahead of a verdict; takes that finished before an earlier one of the list
        self.in_flight: list[str] = []
        self.speculative: set[str] = set()
        self._early: dict[str, tuple[GenerationResult, float | None]] = {}

    def first(self, skip: Callable[[int, str], None], counts: QcCounts) -> list[GenerationRequest]:
        """The chain's first requests (its first turn, and that turn's next takes where the bet says
        the first will fail); empty: nothing to generate."""
        return self._issue(self.chain.next_request(skip), 1, counts)

    def on_take(self, engine_id: str, result: GenerationResult, gain_db: float | None,
                counts: QcCounts) -> tuple[list[tuple[PendingTake, Take]], list[GenerationRequest]]:
        """A finished take (its audio as stored): the takes now ready to score with their records (in
        chain order; none while an earlier take of its turn still generates beside it), and what is
        requested ahead of their verdicts: the chain's next turn when the last is likely to be kept,
        else the turn's next take."""
        assert engine_id in self.in_flight, (engine_id, self.in_flight)
        self._early[engine_id] = (result, gain_db)
        ready, ahead = [], []
        while self.in_flight and self.in_flight[0] in self._early:
            head = self.in_flight.pop(0)
            self.speculative.discard(head)
            pending, take, more = self._finished(head, *self._early.pop(head), counts)
            ready.append((pending, take))
            ahead += more
        return ready, ahead

    def _finished(self, engine_id: str, result: GenerationResult, gain_db: float | None,
                  counts: QcCounts) -> tuple[PendingTake, Take, list[GenerationRequest]]:
        """The next take in chain order: its record, the take to score, and what is requested ahead."""
        chain, request = self.chain, self.chain.request
        assert request is not None
        take = Take(result.audio, request.text, result.codes, self._voice(request.speaker))
        same_turn = self.pending and self.pending[-1].request.request_id == request.request_id  # a retake ahead
        number = self.pending[-1].number + 1 if same_turn else self.retakes.take_number(request)
        pending = PendingTake(request, chain.turn, chain.plan, engine_id, result, gain_db, chain.snapshot(),
                              number=number)
        self.pending.append(pending)
        if self.in_flight:  # the turn's next takes generate beside this one: the bet was placed already
            return pending, take, []
        retakes = self._siblings(number)  # the verdict will likely ask for them: the same request, the next seeds
        if retakes:
            return pending, take, self._register(retakes, counts)
        bet = self.keep_rate is None or self.keep_rate.worth_it(number)
        if not (self.speculate_turns and request.followed and bet):
            return pending, take, []
        pending.assumed = self.retakes.as_accepted(request, result)
        chain.add_result(pending.assumed)
        ahead = chain.next_request(lambda turn, reason: pending.skipped.append((turn, reason)))
        if ahead is None:
            pending.ends = True
            return pending, take, []
        return pending, take, self._issue(replace(ahead, speculative=True), 1, counts)

    def bet_again(self, counts: QcCounts) -> list[GenerationRequest]:
        """The turn's next takes, to generate beside the take now generating alone, where the bet has
        turned since it was requested (its take number now fails often enough; e.g. the first takes
        of a run, requested before any verdict); empty when nothing changes."""
        if self.pending or len(self.in_flight) != 1 or not self.speculate_takes:
            return []
        request = self.chain.request
        number = self.retakes.take_number(request)  # the take generating now (none awaits a verdict)
        if self.in_flight[0] != (request.request_id if number == 1 else take_id(request.request_id, number)):
            return []
        return self._register(self._siblings(number), counts)

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
                requests = self._issue(self.chain.next_request(lambda turn, reason: out.skipped.append((turn, reason))),
                                       1, counts)
            else:  # the turn's next take
                requests = self._issue(outcome, self.retakes.take_number(head.request), counts)
            out.submit += requests
            out.done = not requests
            return out
        return out

    def _generated_ahead(self, request_id: str) -> bool:
        """Whether the request was made ahead of the verdict that asks for it (then it is no longer a bet)."""
        if self.pending:
            return self.pending[0].engine_id == request_id
        if self.in_flight and self.in_flight[0] == request_id:
            self.speculative.discard(request_id)
            return True
        return False

    def _issue(self, request: GenerationRequest | None, number: int, counts: QcCounts) -> list[GenerationRequest]:
        """`request` (take `number` of the chain's current turn) and the turn's next takes beside it
        where the bet says it will fail (`_siblings`), registered as generating."""
        return [] if request is None else self._register([request, *self._siblings(number)], counts)

    def _siblings(self, number: int) -> list[GenerationRequest]:
        """The current turn's takes after take `number`, while the bet says the one before each will
        fail (up to `qc.max_takes`): the same request with each take's id and seed, speculative."""
        siblings = []
        while self.speculate_takes and number < self.retakes.settings.max_takes and not self.keep_rate.worth_it(number):
            number += 1
            siblings.append(replace(self.retakes.retake(self.chain.request, number), speculative=True))
        return siblings

    def _register(self, requests: list[GenerationRequest], counts: QcCounts) -> list[GenerationRequest]:
        """Note `requests` as generating (those made ahead of a verdict counted); returns them."""
        self.in_flight += [r.request_id for r in requests]
        self.speculative |= {r.request_id for r in requests if r.speculative}
        counts.speculative_turns += sum(r.speculative for r in requests)
        return requests

    def _roll_back(self, head: PendingTake, out: Verdicts, counts: QcCounts) -> None:
        """Discard what was speculated past `head` and put the chain back as it was at its take."""
        for later in self.pending:  # finished speculative takes: generated for nothing
            later.discarded = True
            counts.speculative_frames_discarded += later.result.num_frames
        counts.speculative_discarded += len(self.pending)
        for request_id in self.in_flight:
            if request_id in self._early:  # finished, waiting for an earlier take of its turn
                counts.speculative_frames_discarded += self._early.pop(request_id)[0].num_frames
                counts.speculative_discarded += 1
            elif request_id in self.speculative:
                out.cancel.append(request_id)
                counts.speculative_discarded += 1
        self.pending, self.in_flight, self.speculative = [], [], set()
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
