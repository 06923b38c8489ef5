"""The errors of a committed store: refused, cannot be written, lost to another writer.

`StoreError` is a store that cannot be used as asked (not synth's, another kind's, other
inputs, damaged beyond repair, unreachable); its message names the directory and what to
do, and commands exit 2 on it. `StopRun` and its kinds are failures that are no unit's
fault (a full disk, a lost lease), so retrying a unit cannot help: the command stops and a
relaunch resumes from what is committed. This module knows nothing of what is stored.
"""

from __future__ import annotations

import errno

from synth.errors import SynthError

# errno values of a write that fails because of the store itself, not of what is written
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


class StoreError(SynthError, RuntimeError):
    """The store cannot take this command (not synth's, another kind's, other inputs, damaged); the message says why."""


class StopRun(SynthError, RuntimeError):
    """Not a unit's fault: retrying it cannot help, so the command stops (a relaunch resumes)."""


class OutputWriteError(StopRun):
    """Writing to the store failed because of the store itself: no space, no permission, an unreachable store."""


class LeaseLost(StopRun):
    """Another command holds the store's lease now: this one must write nothing more."""


class InputChanged(StopRun):
    """An input changed under a running command (a manifest file rewritten, a row reordered)."""


def describe_os_error(error: BaseException) -> str:
    """An OSError (or pyarrow's) as a short reason: the errno's words where there is one."""
    code = getattr(error, "errno", None)
    reason = getattr(error, "strerror", None) or str(error)
    if code == errno.ENOSPC:
        return "no space left on the device"
    if code == errno.EROFS:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if code == errno.ENOTDIR:
        return "a path component is a file, not a directory"
    return reason
