"""Named crash points for fault-injection tests: inert unless an environment variable names them.

This module owns `crash_point(name)`, a call placed at each phase of a run where a crash
matters (a part's commit, a shard's done marker, the clean-up, the driver's loop, the
lease), and the spec that arms them: `SYNTH_CRASH_AT`, comma-separated `NAME:N:TOKEN`.
The N-th time a process reaches point NAME, it creates the file TOKEN (O_CREAT|O_EXCL)
and, if that created it, exits at once with `os._exit(137)`: no clean-up, no `finally`,
as `kill -9` leaves it. A token that exists already means some process crashed there
before (Ray restarts a crashed actor, and the new process counts its hits from zero), so
each spec fires at most once. With the variable unset a crash point costs one lookup.

`raise_point(name, key)` is the same for a failure that is not a crash: it raises
`InjectedFault` every time it is reached with a key that `SYNTH_RAISE_AT` (comma-separated
`NAME:KEY`) arms, e.g. the script whose generation should fail.

The driver hands the variables to its actors (`actor_runtime_env`), since on a running cluster
they do not inherit the driver's environment. It knows nothing about what the points
guard.
"""

from __future__ import annotations

import os
from collections import Counter

ENV_VAR = "SYNTH_CRASH_AT"
RAISE_VAR = "SYNTH_RAISE_AT"
CRASH_EXIT_STATUS = 137  # what a shell reports for a process killed by SIGKILL (128 + 9)

_hits: Counter[str] = Counter()  # crash point -> times this process reached it


def crash_point(name: str) -> None:
    """Crash this process here if `SYNTH_CRASH_AT` arms `name` for this hit (see the module docstring)."""
    specs = os.environ.get(ENV_VAR)
    if not specs:
        return
    _hits[name] += 1
    for point, hit, token in parse(specs):
        if point == name and hit == _hits[name] and _claim(token):
            os.write(2, f"synth: crash point {name} (hit {hit}): exiting with {CRASH_EXIT_STATUS}\n".encode())
            os._exit(CRASH_EXIT_STATUS)


class InjectedFault(RuntimeError):
    """The failure a `raise_point` armed by `SYNTH_RAISE_AT` raises."""


def raise_point(name: str, key: str) -> None:
    """Raise InjectedFault if `SYNTH_RAISE_AT` arms `name` for `key` (see the module docstring)."""
    specs = os.environ.get(RAISE_VAR)
    if specs and f"{name}:{key}" in specs.split(","):
        raise InjectedFault(f"injected fault at {name} for {key!r} ({RAISE_VAR})")


def parse(specs: str) -> list[tuple[str, int, str]]:
    """`NAME:N:TOKEN,...` as (name, n, token path); a malformed spec raises ValueError naming it."""
    parsed = []
    for spec in filter(None, specs.split(",")):
        name, _, rest = spec.partition(":")
        hit, _, token = rest.partition(":")
        if not (name and hit.isdigit() and int(hit) >= 1 and token):
            raise ValueError(f"{ENV_VAR}: bad spec {spec!r}; expected NAME:N:TOKEN_PATH with N >= 1")
        parsed.append((name, int(hit), token))
    return parsed


def _claim(token: str) -> bool:
    """Create `token`; False if it exists (another process crashed at this spec already)."""
    try:
        fd = os.open(token, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True


def actor_runtime_env() -> dict | None:
    """The Ray runtime_env that arms an actor's crash and raise points as the driver's are, or
    None (on a running cluster actors start from the raylet's environment, not the driver's)."""
    armed = {name: os.environ[name] for name in (ENV_VAR, RAISE_VAR) if os.environ.get(name)}
    return {"env_vars": armed} if armed else None
