"""The context budget: which earlier turns condition the next generated turn.

CSM holds `max_positions` backbone positions per row (2048 for csm-1b): the prompt's
text tokens, one position per context audio frame, and the frames being generated.
This module owns the choice of context under that budget: keep the pinned items (voice
prompts and a script's opening recorded turns), then the most recent turns that fit,
always leaving room for the turn's own length cap. The plan works on costs alone;
`SegmentCost` measures them through an engine's `count_prompt_tokens`. It knows nothing
about tokenizers or manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from synth.engine.interface import Engine, GenerationRequest, Segment
from synth.errors import SynthError

MIN_FRAMES_TO_GENERATE = 1


@dataclass(frozen=True)
class ContextItem:
    """One candidate context turn.

    key: "voice:NAME" for a voice prompt, else the turn's output id "SCRIPT:TURN".
    turn: the script's turn index, None for a voice prompt.
    cost: backbone positions it occupies (its text tokens + one per audio frame + markers).
    pinned: kept ahead of recent turns (voice prompts, a script's opening recorded turns).
    """

    key: str
    turn: int | None
    segment: Segment
    cost: int
    pinned: bool = False


@dataclass(frozen=True)
class ContextPlan:
    items: tuple[ContextItem, ...]  # in prompt order: pinned (their order), then recent (oldest first)
    max_frames: int  # the turn's cap, lowered only when even an empty context leaves less room
    left_out: int  # candidates that did not fit


class SegmentCost:
    """Backbone positions a context segment adds to any prompt, measured with the engine's own
    prompt counter: CSM's chat template renders each turn on its own, so costs add up."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._bare: dict[int, int] = {}  # speaker -> positions of a one-word prompt with no context

    def __call__(self, segment: Segment) -> int:
        probe = GenerationRequest(request_id="cost", text=".", speaker=segment.speaker, max_frames=1)
        if segment.speaker not in self._bare:
            self._bare[segment.speaker] = self.engine.count_prompt_tokens(probe)
        return self.engine.count_prompt_tokens(replace(probe, context=(segment,))) - self._bare[segment.speaker]


class ContextTooLong(SynthError, ValueError):
    """The turn's own text leaves no room to generate."""


def plan_context(
    candidates: Sequence[ContextItem], *, target_cost: int, max_frames: int, max_positions: int
) -> ContextPlan:
    """Choose the context of one turn.

    candidates: every earlier turn with audio, in script order (pinned ones anywhere).
    target_cost: positions of the turn's own prompt with no context.
    Pinned items are taken in order while they fit; then recent items newest first,
    stopping at the first that does not fit (the window stays contiguous).
    """
    room_to_generate = max_positions - target_cost
    if room_to_generate < MIN_FRAMES_TO_GENERATE:
        raise ContextTooLong(
            f"the turn's text alone needs {target_cost} positions, leaving no room to generate within "
            f"the model's {max_positions}"
        )
    max_frames = min(max_frames, room_to_generate)
    budget = room_to_generate - max_frames
    pinned: list[ContextItem] = []
    for item in candidates:
        if item.pinned and item.cost <= budget:
            pinned.append(item)
            budget -= item.cost
    recent: list[ContextItem] = []
    for item in reversed([c for c in candidates if not c.pinned]):
        if item.cost > budget:
            break
        recent.append(item)
        budget -= item.cost
    chosen = tuple(pinned + recent[::-1])
    return ContextPlan(chosen, max_frames, len(candidates) - len(chosen))
