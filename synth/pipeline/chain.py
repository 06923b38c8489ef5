"""A conversation generated turn by turn: every generated turn becomes context for the next.

This module owns the chain: a script's turns in order, the recorded ones (context clips)
and the ones to generate, the candidate context so far (pinned voice prompts and opening
recorded turns, then every earlier turn with audio), and for each turn to generate its
request, with the context that `synth.pipeline.context_plan` chooses under the engine's
position budget. A turn whose own text leaves no room to generate is skipped and
reported, and the chain goes on; what a generated turn's context had to leave out is in
its plan's `notes`. A generated turn conditions later turns through the codes it was
generated from (`context_from="codes"`: the engine is told to use them for its audio) or
through its audio as any clip, Mimi-encoded again (`"audio"`, what chaining transformers'
`generate` calls does). Each request names the turn it follows (`continues`) and whether a
turn will follow it (`followed`), so an engine with KV continuation can keep the previous
turn's cache and prefill only what is new; a window sliding by blocks
(`context_low_water`, see `synth.pipeline.context_plan`) keeps consecutive prompts
extending each other for many turns, its start carried from each turn's plan to the next. The shard worker runs a shard's scripts as chains and
the dialogue benchmark runs its dialogues through the same class, so both measure and
produce the same thing.

It drives nothing: the caller submits each request to an engine and hands the result
back (`add_result`), then asks for the next request. A caller that goes ahead of a decision
(QC's speculative continuation, `synth.pipeline.verdicts`) takes a `snapshot` first and may
`restore` it: the chain is then as it was, the engine's remembered codes included. It knows nothing about manifests,
output files, configs or Ray, and imports neither Ray nor pydantic (the benchmark runs
on a bare GPU box).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Sequence

import numpy as np

from synth.engine.interface import Engine, GenerationRequest, GenerationResult, Segment
from synth.pipeline.context_plan import (
    MIN_FRAMES_TO_GENERATE,
    ContextItem,
    ContextPlan,
    ContextTooLong,
    SegmentCost,
    plan_context,
)

# How a generated turn conditions later turns: its own codes, or its audio encoded again.
ContextFrom = Literal["codes", "audio"]
CONTEXT_FROM: tuple[ContextFrom, ...] = ("codes", "audio")


@dataclass(frozen=True)
class ChainState:
    """What `Chain.restore` puts back: the chain's position and context, and the codes of its
    generated turns (by turn key) to give the engine again."""

    candidates: tuple[ContextItem, ...]
    cursor: int
    turn: int
    request: GenerationRequest | None
    plan: ContextPlan | None
    window_start: int
    codes: dict[str, np.ndarray]


@dataclass(frozen=True)
class ChainTurn:
    """One turn of a chain.

    key: the turn's output id ("SCRIPT:TURN"), also its request id.
    recorded: the turn's recorded clip as context (text + audio), or None to generate it.
    max_frames, seed: the cap and seed of a turn to generate.
    """

    key: str
    speaker: int
    text: str
    recorded: Segment | None = None
    max_frames: int = 0
    seed: int = 0


class Chain:
    """The turns of one script, generated in order; see the module docstring."""

    def __init__(self, turns: Sequence[ChainTurn], engine: Engine, cost: SegmentCost,
                 prompts: Sequence[ContextItem] = (), context_from: ContextFrom = "codes",
                 context_low_water: float | None = None):
        """prompts: pinned context every turn starts from (voice prompts), in prompt order.
        context_from: how a generated turn conditions later ones (see the module docstring).
        context_low_water: None, a rolling context window; a fraction, a window sliding by blocks
        down to it (`plan_context`'s `low_water`)."""
        if context_from not in CONTEXT_FROM:
            raise ValueError(f"context_from={context_from!r}: expected one of {', '.join(CONTEXT_FROM)}")
        self.context_from = context_from
        self.context_low_water = context_low_water
        self.window_start = 0  # the oldest turn the next turn's window may hold (the last plan's start)
        self.turns = tuple(turns)
        self.engine = engine
        self.cost = cost
        self.candidates: list[ContextItem] = list(prompts)  # prompts, then earlier turns with audio
        self.cursor = 0  # the next turn to look at
        self.turn = -1  # the turn being generated (one at a time),
        self.request: GenerationRequest | None = None  # its request,
        self.plan: ContextPlan | None = None  # and the context chosen for it
        self._codes: dict[str, np.ndarray] = {}  # turn key -> codes of a generated turn the engine remembers

    def next_request(self, skip: Callable[[int, str], None]) -> GenerationRequest | None:
        """The next turn to generate, with its context planned; None when the chain is done.
        A turn that cannot be generated is reported as skip(turn, reason) and passed over."""
        while self.cursor < len(self.turns):
            i = self.cursor
            self.cursor += 1
            turn = self.turns[i]
            if turn.recorded is not None:  # recorded turns before the first generated one stay pinned
                pinned = all(t.recorded is not None for t in self.turns[:i])
                self.candidates.append(ContextItem(turn.key, i, turn.recorded, self.cost(turn.recorded), pinned))
                continue
            followed = any(t.recorded is None for t in self.turns[i + 1:])
            chain_frames = sum(t.max_frames for t in self.turns[i:] if t.recorded is None)
            request = GenerationRequest(request_id=turn.key, text=turn.text, speaker=turn.speaker,
                                        max_frames=turn.max_frames, seed=turn.seed, followed=followed,
                                        chain_frames=chain_frames,
                                        continues=self.request.request_id if self.request is not None else None)
            max_positions = self.engine.max_positions
            try:
                plan = plan_context(self.candidates, target_cost=self.engine.count_prompt_tokens(request),
                                    max_frames=request.max_frames, max_positions=max_positions,
                                    low_water=self.context_low_water, start=self.window_start)
            except ContextTooLong as e:
                skip(i, str(e))
                continue
            request = replace(request, context=tuple(item.segment for item in plan.items))
            room = max_positions - self.engine.count_prompt_tokens(request)  # exact, not summed
            if room < MIN_FRAMES_TO_GENERATE:
                skip(i, f"prompt leaves no room to generate within {max_positions}")
                continue
            self.turn, self.plan, self.window_start = i, plan, plan.start
            self.request = replace(request, max_frames=min(plan.max_frames, room))
            return self.request
        self._forget(self.candidates)  # the chain is done: no turn needs its codes any more
        self.candidates = []
        return None

    def add_result(self, result: GenerationResult) -> None:
        """The current turn's result: its audio joins the context of the turns after it."""
        assert self.request is not None and result.request_id == self.request.request_id
        if not result.num_frames:
            return
        if self.context_from == "codes":
            self.engine.remember_codes(result.audio, result.codes)
            self._codes[result.request_id] = result.codes
        generated = Segment(self.request.speaker, self.request.text, result.audio)
        self.candidates.append(ContextItem(result.request_id, self.turn, generated, self.cost(generated),
                                           generated=True))
        self._forget_unreachable()

    def snapshot(self) -> ChainState:
        """The chain as it is now, for `restore`."""
        return ChainState(tuple(self.candidates), self.cursor, self.turn, self.request, self.plan,
                          self.window_start, dict(self._codes))

    def restore(self, state: ChainState) -> None:
        """Put the chain back as it was at `snapshot`: turns added since are forgotten by the engine,
        and the generated turns it held then are remembered again (those forgotten since, e.g.
        out of reach of a turn that was added, or at the chain's end)."""
        kept = {item.key for item in state.candidates}
        self._forget([item for item in self.candidates if item.key not in kept])
        self.candidates = list(state.candidates)
        self.cursor, self.turn, self.request, self.plan = state.cursor, state.turn, state.request, state.plan
        self.window_start = state.window_start
        self._codes = dict(state.codes)
        if self.context_from == "codes":
            for item in self.candidates:
                if item.generated:
                    self.engine.remember_codes(item.segment.audio, self._codes[item.key])

    def _forget_unreachable(self) -> None:
        """Drop recent turns that no later context can reach (those past `max_positions` of newer
        turns), so a long chain, e.g. a book chapter, holds only a window of audio."""
        reach, keep = 0, []
        for item in reversed(self.candidates):
            if not item.pinned:
                reach += item.cost
                if reach > self.engine.max_positions:
                    continue
            keep.append(item)
        kept = {id(item) for item in keep}
        self._forget([item for item in self.candidates if id(item) not in kept])
        self.candidates = keep[::-1]

    def _forget(self, items: Sequence[ContextItem]) -> None:
        """Let the engine drop the codes it was given for these generated turns (`context_from="codes"`)."""
        for item in items:
            if item.generated and self.context_from == "codes":
                self.engine.forget_codes(item.segment.audio)
                self._codes.pop(item.key, None)
