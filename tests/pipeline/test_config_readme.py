"""The README's config tables hold every setting of `synth run` with its default, and no other.

The tables are the rows of *Configuration* and *Quality control* whose first cell names
settings (`section.field`, several in one row with their defaults in order; a later name
without a dot shares the first one's section). Defaults are read as YAML: `null`, `true`,
numbers, lists; `required` for a voice's fields, which have none. `qc.*` is a pointer, not a setting.
"""

import dataclasses
import os
import re
import typing

import yaml
from helpers import REPO
from pydantic import BaseModel

from synth.pipeline.config import SynthConfig

SECTIONS = ("## Configuration", "## Quality control")  # the README sections that hold the tables
REQUIRED = "required"


def _plain(value):
    """A default as YAML reads it back: tuples as lists."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def _section_type(annotation):
    """The model or dataclass a field holds as a section (`dict[str, X]`: X, one per name), else None."""
    if typing.get_origin(annotation) is dict:
        annotation = typing.get_args(annotation)[1]
    if isinstance(annotation, type) and (issubclass(annotation, BaseModel) or dataclasses.is_dataclass(annotation)):
        return annotation
    return None


def _children(cls) -> list[tuple[str, object, object]]:
    """(name, annotation, default or REQUIRED) of each field of a pydantic model or a dataclass."""
    if issubclass(cls, BaseModel):
        return [(name, info.annotation, REQUIRED if info.is_required() else info.get_default(call_default_factory=True))
                for name, info in cls.model_fields.items()]
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], f.default_factory() if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)]


def settings(cls=SynthConfig, prefix: str = "") -> dict[str, object]:
    """Every setting's dotted name (`voices.NAME.audio` for each voice's) -> its default."""
    out = {}
    for name, annotation, default in _children(cls):
        section = _section_type(annotation)
        if section is None:
            out[prefix + name] = default
        else:
            dict_of = typing.get_origin(annotation) is dict
            out.update(settings(section, f"{prefix}{name}.{'NAME.' if dict_of else ''}"))
    return out


def _split(cell: str) -> list[str]:
    """A cell's comma-separated items, commas inside backticks or brackets kept."""
    items, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(cell):
        quoted ^= ch == "`"
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0 and not quoted:
            items.append(cell[start:i])
            start = i + 1
    return [item.strip() for item in items + [cell[start:]]]


def readme_rows() -> dict[str, str]:
    """Setting name -> its default's text, from the README's config tables."""
    text = open(os.path.join(REPO, "README.md")).read()
    sections = {line.split("(")[0].strip() for line in re.findall(r"^## .*$", text, re.M)}
    assert set(SECTIONS) <= sections, "the README's config sections moved: update SECTIONS"
    rows, top = {}, {name for name, *_ in _children(SynthConfig)}
    for heading in SECTIONS:
        body = text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
        for line in body.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
            names = re.findall(r"`([^`]+)`", cells[0]) if cells else []
            if not names or "." not in names[0] or names[0].split(".")[0] not in top or names[0].endswith(".*"):
                continue
            prefix = names[0].rsplit(".", 1)[0]
            names = [n if "." in n else f"{prefix}.{n}" for n in names]
            defaults = _split(cells[1])
            assert len(defaults) == len(names), f"README row {names}: {len(names)} names, defaults {cells[1]!r}"
            for name, default in zip(names, defaults):
                assert name not in rows, f"{name} has two README rows"
                rows[name] = default
    return rows


def _read_default(text: str):
    text = text.strip("`").replace("−", "-")  # the README writes a minus sign
    return text if text == REQUIRED else yaml.safe_load(text)


def test_the_readme_tables_hold_every_setting_with_its_default_and_no_other():
    model, readme = settings(), readme_rows()
    missing = sorted(set(model) - set(readme))
    assert not missing, f"settings with no README row (README.md, *Configuration*): {missing}"
    unknown = sorted(set(readme) - set(model))
    assert not unknown, f"README rows naming no setting: {unknown}"
    wrong = {name: (readme[name], model[name]) for name in model
             if _read_default(readme[name]) != _plain(model[name])}
    assert not wrong, f"README defaults that are not the model's (README, model): {wrong}"


def test_the_walk_reaches_every_kind_of_setting():
    """The test above is only as good as the walk: it sees nested QC, the dataclass sections and the voices."""
    model = settings()
    for name in ("qc.thresholds.max_wer", "qc.asr.num_beams", "qc.cleanup.keep_silence_s", "fast_engine.num_slots",
                 "fast_engine.park_rows", "voices.NAME.audio", "output.watermark", "transformers_engine.batch_size"):
        assert name in model, name
    assert model["qc.metrics"] == ("asr", "speaker", "dnsmos", "level", "timing", "repetition")
    assert model["voices.NAME.speaker"] == REQUIRED and model["fast_engine.max_positions"] is None
    assert len(model) > 80
