"""The context budget: which earlier turns condition the next generated turn.

CSM holds `max_positions` backbone positions per row (2048 for csm-1b): the prompt's
text tokens, one position per context audio frame, and the frames being generated.
This module owns the choice of context under that budget: keep the pinned items (voice
prompts and a script's opening recorded turns), then a window of recent turns that fits,
always leaving room for the turn's own length cap; and the notes that say what a turn
lost: a pinned item, or a recorded clip too long for the room (old recent turns falling
out of the window are the plan working, not news).

The window either rolls (every turn keeps the most recent turns that fit: once it is full,
each turn drops the oldest, so no turn's prompt starts like its predecessor's) or slides by
blocks (`low_water`): a turn keeps the window its predecessor started (`start`) while all
of it fits, so consecutive prompts extend each other (an engine keeps the predecessor's KV
cache and prefills only what is new); when it no longer fits, the oldest turns are dropped
until the window holds at most `low_water` of the room (always keeping the newest turn that
fits), and the next turns keep that new start. The start comes from the chain's own history
(the previous plan's `start`), so the same chain always gets the same contexts. The plan works on costs alone;
`SegmentCost` measures them through an engine's `count_prompt_tokens`. It knows nothing
about tokenizers or manifests.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from synth.engine.interface import Engine, GenerationRequest, Segment
from synth.errors import SynthError
from synth.pipeline.record import voice_name

MIN_FRAMES_TO_GENERATE = 1
LOW_WATER = 0.5  # the default block window's low-water mark (`generation.context_low_water`; README says why)


@dataclass(frozen=True)
class ContextItem:
    """One candidate context turn.

    key: `record.voice_key` ("voice:NAME") for a voice prompt, else the turn's `record.row_id` ("SCRIPT:TURN").
    turn: the script's turn index, None for a voice prompt.
    cost: backbone positions it occupies (its text tokens + one per audio frame + markers).
    pinned: kept ahead of recent turns (voice prompts, a script's opening recorded turns).
    generated: a turn generated in this chain, not a recorded clip or a voice prompt.
    """

    key: str
    turn: int | None
    segment: Segment
    cost: int
    pinned: bool = False
    generated: bool = False


@dataclass(frozen=True)
class ContextPlan:
    items: tuple[ContextItem, ...]  # in prompt order: pinned (their order), then recent (oldest first)
    max_frames: int  # the turn's cap, lowered only when even an empty context leaves less room
    left_out: int  # candidates that did not fit
    start: int = 0  # the window's oldest turn (the first recent item's, else the start it was given): the next turn's start
    notes: tuple[str, ...] = ()  # what the turn lost that it should hear of: pinned items, oversized recorded clips


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
    candidates: Sequence[ContextItem], *, target_cost: int, max_frames: int, max_positions: int,
    low_water: float | None = None, start: int = 0,
) -> ContextPlan:
    """Choose the context of one turn.

    candidates: every earlier turn with audio, in script order (pinned ones anywhere).
    target_cost: positions of the turn's own prompt with no context.
    low_water: None, a rolling window; a fraction in (0, 1], a window sliding by blocks down to
    that fraction of the room left after the pinned items.
    start: (block window) the oldest turn the window may hold, the previous plan's `start`.
    Pinned items are taken in order while they fit. Block window: every recent item from
    `start` on, if all fit. Otherwise (and always for a rolling window) recent items newest
    first, stopping at the first that does not fit the room (rolling) or, after the newest, the
    low-water mark (block); the window stays contiguous. A note names each pinned item left
    out, and a recorded clip where the window stops that would not fit even with no recent
    turn before it.
    """
    if low_water is not None and not 0 < low_water <= 1:
        raise ValueError(f"low_water={low_water}: expected a fraction in (0, 1], or None for a rolling window")
    room_to_generate = max_positions - target_cost
    if room_to_generate < MIN_FRAMES_TO_GENERATE:
        raise ContextTooLong(
            f"the turn's text alone needs {target_cost} positions, leaving no room to generate within "
            f"the model's {max_positions}"
        )
    max_frames = min(max_frames, room_to_generate)
    context_budget = budget = room_to_generate - max_frames
    pinned: list[ContextItem] = []
    notes: list[str] = []
    for item in candidates:
        if not item.pinned:
            continue
        if item.cost <= budget:
            pinned.append(item)
            budget -= item.cost
        else:
            notes.append(_left_out(item, budget, context_budget, "after the pinned items before it"))
    recent_budget = budget
    candidates_recent = [c for c in candidates if not c.pinned]
    held = [c for c in candidates_recent if c.turn is not None and c.turn >= start]
    if low_water is not None and sum(c.cost for c in held) <= recent_budget:
        recent = held  # the window its predecessor started, extended by the turns since
    else:  # roll, or slide: newest first down to the mark
        mark = recent_budget if low_water is None else low_water * recent_budget
        recent = []
        for item in reversed(candidates_recent):
            if item.cost > budget or (recent and recent_budget - budget + item.cost > mark):
                if not item.generated and item.cost > recent_budget:  # too long for any window, not just this one
                    notes.append(_left_out(item, recent_budget, context_budget, "after the pinned items"))
                break
            recent.append(item)
            budget -= item.cost
        recent.reverse()
    chosen = tuple(pinned + recent)
    start = recent[0].turn if recent and recent[0].turn is not None else start
    return ContextPlan(chosen, max_frames, len(candidates) - len(chosen), start, tuple(notes))


def _left_out(item: ContextItem, room: int, context_budget: int, after: str) -> str:
    """Why `item` is not in the context: it exceeds the turn's whole context budget, or the `room` left."""
    what = f"voice prompt {voice_name(item.key) or item.key!r}" if item.turn is None else f"context clip {item.key!r}"
    if item.cost > context_budget:
        reason = f"it does not fit the turn's {context_budget}-position context budget"
    else:
        reason = f"only {room} of the turn's {context_budget} context positions were left {after}"
    return f"{what} ({item.cost} positions) left out: {reason}"
