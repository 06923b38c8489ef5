"""Where the fast engine's compiled steps are kept between processes, and under which key.

This module owns the compile cache (`CompileCache`): one directory per key under a root
(the config's `fast_engine.compile_cache`, on local disk or on storage every node mounts),
used as inductor's cache directory (`TORCHINDUCTOR_CACHE_DIR`) while the engine compiles.
Its FX graphs, AOT-autograd graphs, generated kernels and their binaries (C++ shared
objects on CPU; Triton kernels on CUDA, which inductor bundles into its FX-graph entries)
are written there by the first start and loaded by every later start with the same key,
so dynamo's tracing is all a warm start compiles again. The key (`compile_key`) names what
the compiled code depends on: the model's architecture (not its weights: they are inputs
of the compiled functions), the engine's shapes (slots, positions, attention buckets,
sampler width, stop rules), dtype, compile mode, the source of the compiled code, torch
and Python versions, and the device (GPU name and compute capability, or the CPU's
architecture, vector ISA and thread count). A `key.json` written after a complete warm-up
marks a directory warm. Inductor keys its own entries too (a stale directory is never
wrong, only cold); the key keeps one configuration's artifacts together and apart from the
others'. It knows nothing about the model's math, scheduling or configs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch

KEY_FILE = "key.json"
# The modules whose code the engine compiles: a change to any of them is a new key.
COMPILED_SOURCES = ("frame_step.py", "lean_csm.py", "stop.py")


def device_tag(device: torch.device) -> str:
    """The device as compiled code depends on it: GPU name and compute capability, or CPU
    architecture, the vector instructions inductor generates for and the threads its loops are
    split over (inductor's own key holds the thread count)."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} sm_{major}{minor}"
    return f"cpu {platform.machine()} {torch.backends.cpu.get_cpu_capability()} {torch.get_num_threads()} threads"


def _sources_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in COMPILED_SOURCES:
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def compile_key(*, model_args, device: torch.device, dtype: torch.dtype, **shapes) -> dict:
    """The key of a compiled engine: the architecture (`CsmArgs`), device, dtype and the shapes
    and settings the caller passes (slots, positions, buckets, ...), with the versions and the
    source of the compiled code."""
    args = asdict(model_args) if is_dataclass(model_args) else model_args
    return {"model": args, "dtype": str(dtype).removeprefix("torch."), "device": device_tag(device),
            **{k: (asdict(v) if is_dataclass(v) else v) for k, v in sorted(shapes.items())},
            "torch": torch.__version__, "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "sources": _sources_digest()}


@dataclass(frozen=True)
class CompileCache:
    """The cache directory of one key under `root` (user paths expanded)."""

    root: str
    key: dict

    @property
    def directory(self) -> Path:
        digest = hashlib.sha256(json.dumps(self.key, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return Path(os.path.expanduser(self.root)) / digest

    def is_warm(self) -> bool:
        """Whether a start with this key has completed its warm-up here before."""
        return (self.directory / KEY_FILE).is_file()

    @contextmanager
    def active(self):
        """Inductor reads and writes this key's directory inside the block (this process's
        setting before it comes back after)."""
        path = self.directory / "inductor"
        path.mkdir(parents=True, exist_ok=True)
        from torch._inductor.runtime import cache_dir_utils

        temporary = getattr(cache_dir_utils, "temporary_cache_dir", None)
        if temporary is not None:
            with temporary(str(path)):
                yield
            return
        before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # torch without the helper: the variable alone
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before

    def mark_warm(self, **facts) -> None:
        """Record the key (and `facts`, e.g. the cold warm-up's seconds) once a warm-up is complete;
        written to a temporary name, then renamed, so a reader never sees half of it."""
        path = self.directory / KEY_FILE
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": self.key, **facts}, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)
