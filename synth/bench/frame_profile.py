"""Where one frame of the fast engine goes: kernels per frame and their time, by part.

This module owns `profile_frame`: one frame of a loaded `FastEngine`, all slots, attending
over every position, run under torch's profiler twice. First as the engine runs it (one
CUDA-graph replay, or its compiled or eager steps where there are no graphs): the kernels per
frame and their device time. Then eagerly with the steps uncompiled and each part of the frame
in a named range: `backbone` (the backbone step and codebook 0's head), `depth` (the depth
decoder's passes and its heads), `sampling` (choosing each codebook from its logits) and
`copies` (all the rest: embedding the frame, the history, stop rules, status and state
copies), for the split. On CUDA it counts kernels (memory copies and sets included) and their
device time; on CPU, which launches no kernels, aten ops and their self CPU time stand in.
Every frame here leaves the slot state as it was (`FrameStep.state_kept`). It knows nothing
about requests, scheduling or files.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from synth.engine.frame_step import GraphedFrame

PARTS = ("backbone", "depth", "sampling", "copies")


@contextmanager
def _named_parts(engine):
    """The frame's parts wrapped in profiler ranges (instance attributes over the methods), undone after."""
    step, model = engine.step, engine.model
    patches = [(model, "backbone_step", "backbone"), (model.lm_head, "forward", "backbone"),
               (step, "_first_codebooks", "depth"), (step, "_next_codebook", "depth"), (step, "_choose", "sampling")]
    for owner, name, part in patches:
        method = getattr(owner, name)

        def ranged(*args, _method=method, _part=part, **kwargs):
            with record_function(f"synth::{_part}"):
                return _method(*args, **kwargs)

        setattr(owner, name, ranged)
    try:
        yield
    finally:
        for owner, name, _ in patches:
            delattr(owner, name)


def _tally(prof, cuda: bool) -> dict[str, dict]:
    """Kernels (CUDA) or aten ops (CPU) and their time (us) per part, each under its innermost range."""
    parts = {p: {"count": 0, "us": 0.0} for p in PARTS}

    def walk(event, part: str) -> None:
        if event.name.startswith("synth::"):
            part = event.name.removeprefix("synth::")
        if cuda:
            for kernel in event.kernels:  # on the runtime call that launched them (a graph launch: all of it)
                parts[part]["count"] += 1
                parts[part]["us"] += kernel.duration
        elif event.name.startswith("aten::"):
            parts[part]["count"] += not event.cpu_children
            parts[part]["us"] += event.self_cpu_time_total
        for child in event.cpu_children:
            walk(child, part)

    for event in prof.events():
        if event.cpu_parent is None and str(event.device_type).endswith("CPU"):
            walk(event, "copies")
    return parts


def _profiled(fn, cuda: bool):
    fn()  # once before: first-call work (allocations, lazy initialisation) is not the frame's
    if cuda:
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize()
    return prof


@torch.inference_mode()
def profile_frame(engine, sample: bool = True) -> dict:
    """One frame of `engine` as it runs, and split by part (see the module docstring)."""
    step, scheduler = engine.step, engine.scheduler
    cuda = engine.device.type == "cuda"
    kv_len = step.max_positions
    engine.prepare_frames(sample)  # compiled and captured, as a run would have them
    graphed = isinstance(scheduler.run_frame, GraphedFrame)
    mode = "CUDA graph replay" if graphed else ("compiled steps" if step._compiled is not None else "eager steps")
    unit = "CUDA kernels (copies and sets included), device us" if cuda else "aten ops, self CPU us"
    with step.state_kept():
        as_run = _total(_tally(_profiled(lambda: scheduler.run_frame(sample, kv_len), cuda), cuda))
        compiled, step._compiled = step._compiled, None
        try:
            with _named_parts(engine):
                split = _tally(_profiled(lambda: step.frame(sample, kv_len), cuda), cuda)
        finally:
            step._compiled = compiled
    total = sum(p["us"] for p in split.values()) or 1.0
    for p in split.values():
        p["share"] = p["us"] / total
    return {"slots": engine.num_slots, "kv_len": kv_len, "unit": unit, "as_run": {"mode": mode, **as_run},
            "eager_split": split, "eager_total": _total(split)}


def _total(parts: dict[str, dict]) -> dict:
    return {"count": sum(p["count"] for p in parts.values()), "us": sum(p["us"] for p in parts.values())}
