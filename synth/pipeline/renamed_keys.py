"""Config keys that have been renamed, so configs written before still load.

This module owns `RENAMED` (old dotted key -> new one) and `upgrade`, which moves each old key
of a config's raw mapping (before validation) to its new name and says so in a one-line note,
and refuses a config that sets an old name and its new one to different values. The old
`generation.batch_size` meant the fast engine's slots or the transformers engine's rows per
`generate` call, whichever engine `model.engine` named; it moves to that engine's section.
It knows nothing about what the settings mean, nor how they are validated
(`synth.pipeline.config`).
"""

from __future__ import annotations

import copy

RENAMED = {
    "generation.max_positions": "fast_engine.max_positions",
    "generation.silence_stop_frames": "fast_engine.silence_stop_frames",
    "generation.loop_stop_frames": "fast_engine.loop_stop_frames",
    "generation.loop_max_period": "fast_engine.loop_max_period",
}
BATCH_SIZE = {"fast": "fast_engine.num_slots", "transformers": "transformers_engine.batch_size"}  # by model.engine


class RenamedKey(FutureWarning):
    """A config used an old key name; the message says which and its new name."""


def _renames(engine: object) -> dict[str, str]:
    batch_size = BATCH_SIZE.get(engine) if isinstance(engine, str) else None  # a bad engine is refused later
    return {**RENAMED, **({"generation.batch_size": batch_size} if batch_size else {})}


def upgrade(data: dict, engine: object) -> tuple[dict, list[str]]:
    """(data with each old key under its new name, a note per key moved); data is not changed.
    engine: the run's `model.engine` (where `generation.batch_size` goes). Raises ValueError,
    naming both keys, when an old key and its new one are both set to different values."""
    data, notes = copy.deepcopy(data), []
    for old, new in _renames(engine).items():
        (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
        source = data.get(old_section)
        if not isinstance(source, dict) or old_key not in source:
            continue
        target = data.get(new_section)
        if target is None:
            target = data[new_section] = {}
        if not isinstance(target, dict):
            continue  # the section itself is refused when validated
        value = source.pop(old_key)
        if new_key in target and target[new_key] != value:
            raise ValueError(f"{old}={value!r} and {new}={target[new_key]!r} differ: {old} is the old name of {new} "
                             f"(model.engine={engine!r}); set {new} only")
        target[new_key] = value
        notes.append(f"config key {old} is now {new} (read as {new}={value!r}; rename it in the config)")
    return data, notes
