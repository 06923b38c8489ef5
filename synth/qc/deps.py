"""The QC's optional dependencies: importing them, or a clear error naming the `qc` extra.

This module owns `require(module)`: QC's libraries (jiwer, whisper-normalizer, resemblyzer,
speechmos, silero-vad, pyloudnorm) are an optional extra, and a user who turns QC on
without it gets one message with the exact install line instead of an ImportError deep in
an actor. It knows nothing about what the modules compute.
"""

from __future__ import annotations

import importlib
import importlib.util

from synth.errors import SynthError

# the import names of the `qc` extra's libraries (and resemblyzer, installed without its pins)
MODULES = ("jiwer", "whisper_normalizer", "resemblyzer", "speechmos", "onnxruntime", "librosa", "silero_vad",
           "pyloudnorm", "webrtcvad")
INSTALL_LINE = "pip install -e '.[qc]' && pip install --no-deps resemblyzer==0.1.4"


class QcUnavailable(SynthError, ImportError):
    """QC is on but a library it needs is not installed; the message gives the install line."""


def require(module: str):
    """Import `module`, or raise QcUnavailable naming the `qc` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise QcUnavailable(f"quality control (qc.enabled) needs the `qc` extra, and {module!r} cannot be "
                            f"imported ({e}); install it with: {INSTALL_LINE}") from None


def check_installed() -> None:
    """Raise QcUnavailable, naming every missing library, unless the whole `qc` extra is installed
    (a run checks this before it starts any actor)."""
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise QcUnavailable(f"quality control (qc.enabled) needs the `qc` extra; missing: {', '.join(missing)}. "
                            f"Install it with: {INSTALL_LINE}")
