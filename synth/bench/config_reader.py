"""A run's YAML config read where PyYAML may be missing (a bare GPU box has torch, not yaml).

This module owns `read_config`: PyYAML's `safe_load` when it imports, else `parse_config`, a
reader of the YAML subset synth's config files use (nested mappings by indentation, scalars
read as PyYAML reads them: ints, floats with a dot, true/false/yes/no/on/off, null and ~,
quoted or bare strings, and comments), which refuses anything else (lists, flow collections,
anchors, multi-line strings) with the line at fault. It gives plain dicts, validates nothing
(that is `synth.pipeline.config`'s work, with pydantic) and knows nothing about what the
keys mean.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_BOOLS = {**dict.fromkeys(("true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"), True),
          **dict.fromkeys(("false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"), False)}
_NULLS = {"", "~", "null", "Null", "NULL"}
_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_FLOAT = re.compile(r"[-+]?([0-9][0-9_]*)?\.[0-9_]*([eE][-+][0-9]+)?")  # PyYAML's: a dot, so 1e5 is a string
_UNSUPPORTED = ("[", "{", "&", "*", "!", "|", ">", "-", "?", "%", "@", "`")


def _without_comment(line: str) -> str:
    """The line up to a `#` that starts a comment (at the start or after a space, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(text: str, number: int):
    if text[0] == '"' and text[-1] == '"' and len(text) > 1:
        return json.loads(text)
    if text[0] == "'" and text[-1] == "'" and len(text) > 1:
        return text[1:-1].replace("''", "'")
    if text.startswith(_UNSUPPORTED) and not (text.startswith("-") and (_INT.fullmatch(text) or _FLOAT.fullmatch(text))):
        raise ValueError(f"line {number}: {text!r} is beyond the YAML this reader takes (plain mappings and scalars)")
    if text in _NULLS:
        return None
    if text in _BOOLS:
        return _BOOLS[text]
    if _INT.fullmatch(text):
        return int(text.replace("_", ""))
    if _FLOAT.fullmatch(text) and any(c.isdigit() for c in text):
        return float(text.replace("_", ""))
    if text.lower() in (".inf", "+.inf", "-.inf", ".nan"):
        return float(text.lower().replace(".", ""))
    return text


def parse_config(text: str) -> dict:
    """The YAML subset of synth's configs as nested dicts (see the module docstring)."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    opened: list[tuple[dict, str]] = []  # keys with nothing after the colon: a mapping, or null if none follows
    for number, raw in enumerate(text.splitlines(), 1):
        line = _without_comment(raw).rstrip()
        if not line.strip():
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise ValueError(f"line {number}: tabs in indentation")
        indent = len(line) - len(line.lstrip(" "))
        key, colon, value = line.strip().partition(": ") if ": " in line else line.strip().partition(":")
        if not colon or not key or key.startswith(_UNSUPPORTED) or (not value and not line.rstrip().endswith(":")):
            raise ValueError(f"line {number}: {raw.strip()!r} is not a `key: value` line")
        while indent <= stack[-1][0]:
            stack.pop()
        parent = stack[-1][1]
        key = _scalar(key.strip(), number) if key.strip()[0] in "'\"" else key.strip()
        if key in parent:
            raise ValueError(f"line {number}: {key!r} given twice")
        if value.strip():
            parent[key] = _scalar(value.strip(), number)
        else:
            parent[key] = {}
            opened.append((parent, key))
            stack.append((indent, parent[key]))
    for parent, key in opened:
        if parent[key] == {}:
            parent[key] = None  # `key:` with nothing under it is null, as in YAML
    return root


def read_config(path: str | Path) -> tuple[dict, str]:
    """(the config as dicts, which reader read it: "yaml" or "synth's YAML-subset reader")."""
    text = Path(path).read_text()
    try:
        import yaml
    except ImportError:
        return parse_config(text), "synth's YAML-subset reader"
    return yaml.safe_load(text) or {}, "yaml"
