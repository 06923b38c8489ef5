"""Batched Mimi encode/decode for the fast engine, with a content-hash cache of clip codes.

This module owns the codec side of generation: context clips are encoded in batches
(clips of whole frames padded at the end, other clips with clips of equal length, so
each clip's codes are exactly what encoding it alone gives, as transformers does; checked
in the tests) and their codes are cached by the sha256 of the
clip's float32 bytes, since one voice prompt recurs across thousands of rows;
finished rows are decoded in batches padded at the end, which is exact for each
row's own frames because Mimi's decoder is causal (checked in the tests). It uses
transformers' `MimiModel` and knows nothing about the language model or scheduling.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from contextlib import nullcontext as _nullcontext

import numpy as np
import torch


def clip_key(audio: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


def load_mimi(path, config, *, device, dtype):
    """Mimi weights from a CSM checkpoint (its `codec_model.*` tensors) as a MimiModel."""
    from transformers import MimiModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the CSM weights show up as "unexpected" for Mimi
    try:
        mimi, info = MimiModel.from_pretrained(
            str(path), config=config.codec_config, key_mapping={r"^codec_model\.": ""},
            output_loading_info=True,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if info.get("missing_keys"):
        raise ValueError(f"Mimi weights missing from checkpoint {path}: {sorted(info['missing_keys'])[:5]}")
    return mimi.to(device=device, dtype=dtype).eval().requires_grad_(False)


@contextmanager
def _without_onednn():
    """ATen's own CPU convolutions instead of oneDNN's, for the span of the block."""
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


class MimiCodec:
    """Encode clips to codes [T, K] and decode codes to audio, both batched."""

    def __init__(self, mimi, *, num_codebooks: int, max_batch: int = 16, max_decode_frames: int = 8192,
                 cache_size: int = 4096):
        self.mimi = mimi
        self.num_codebooks = num_codebooks
        cfg = mimi.config
        self.sample_rate_hz = int(cfg.sampling_rate)
        self.samples_per_frame = int(round(cfg.sampling_rate / cfg.frame_rate))
        self.max_batch = max_batch
        self.max_decode_frames = max_decode_frames  # frames per decode batch (rows x padded length)
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.pinned: dict[str, torch.Tensor] = {}  # codes known from elsewhere (voice prompts): never evicted
        self.cache_hits = 0
        self.encoded_clips = 0
        self.decode_s = 0.0  # host seconds spent launching/awaiting decodes, for benchmarks
        self._stream = None

    @property
    def device(self):
        return next(self.mimi.parameters()).device

    @property
    def dtype(self):
        return next(self.mimi.parameters()).dtype

    def remember(self, clip: np.ndarray, codes: np.ndarray) -> None:
        """Take `codes` [T, K] as the clip's encoding from now on (e.g. read from a run's voice cache)."""
        self.pinned[clip_key(clip)] = torch.as_tensor(np.asarray(codes), dtype=torch.long)

    def forget(self, clip: np.ndarray) -> None:
        """Encode `clip` again when it comes (undoes `remember`)."""
        self.pinned.pop(clip_key(clip), None)

    @torch.inference_mode()
    def encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """clips: float32 mono at `sample_rate_hz` -> codes [T_i, K] long (CPU), cached by content."""
        keys = [clip_key(c) for c in clips]
        # Clips of whole frames (generated turns) share batches, padded at the end: Mimi's
        # encoder is causal, so a clip's frames never see the padding. A clip that ends
        # mid-frame is batched only with clips of its exact length (its last frame would).
        todo: dict[int, dict[str, np.ndarray]] = defaultdict(dict)  # group (0: whole frames) -> key -> clip
        for key, clip in zip(keys, clips):
            if key in self.pinned:
                self.cache_hits += 1
            elif key in self.cache:
                self.cache.move_to_end(key)
                self.cache_hits += 1
            else:
                todo[0 if len(clip) % self.samples_per_frame == 0 else len(clip)][key] = clip
        for group in todo.values():
            items = sorted(group.items(), key=lambda item: -len(item[1]))
            i = 0
            while i < len(items):
                longest = len(items[i][1])
                n = max(1, min(self.max_batch, self.max_decode_frames * self.samples_per_frame // max(longest, 1)))
                chunk = items[i : i + n]
                i += n
                x = torch.zeros(len(chunk), 1, longest)  # [N, 1, S], zero-padded at the end
                for r, (_, clip) in enumerate(chunk):
                    x[r, 0, : len(clip)] = torch.from_numpy(np.asarray(clip, dtype=np.float32))
                x = x.to(device=self.device, dtype=self.dtype)
                with _nullcontext() if x.is_cuda else _without_onednn():
                    codes = self.mimi.encode(x, num_quantizers=self.num_codebooks).audio_codes  # [N, K, T]
                for (key, clip), c in zip(chunk, codes.transpose(1, 2).long().cpu()):
                    self.cache[key] = c[: -(-len(clip) // self.samples_per_frame)]  # its own frames
                    self.encoded_clips += 1
        out = [self.pinned[k] if k in self.pinned else self.cache[k] for k in keys]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out

    @torch.inference_mode()
    def decode(self, codes: list[np.ndarray]) -> list[np.ndarray]:
        """codes: [T_i, K] each -> float32 audio [T_i * samples_per_frame] each, same order."""
        return self.decode_async(codes).result()

    def side_stream(self):
        """A context running CUDA work on the codec's own stream, beside generation (CPU: no-op)."""
        if self.device.type != "cuda":
            return _nullcontext()
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(self._stream)

    @torch.inference_mode()
    def decode_async(self, codes: list[np.ndarray]) -> "PendingAudio":
        """Start decoding; on CUDA the work runs on a side stream, overlapping generation.
        `.ready()` polls, `.result()` waits and brings the audio to the host."""
        t0 = time.perf_counter()
        cuda = self.device.type == "cuda"
        parts: list[tuple[list[int], torch.Tensor]] = []  # (row indices, audio [N, S] on host)
        order = sorted((i for i in range(len(codes)) if len(codes[i])), key=lambda i: -len(codes[i]))
        i = 0
        # On CPU, Mimi's narrow, long convolutions run faster on ATen's own kernels than on oneDNN's.
        with self.side_stream() if cuda else _without_onednn():
            while i < len(order):
                longest = len(codes[order[i]])
                n = max(1, min(self.max_batch, self.max_decode_frames // longest))
                rows = order[i : i + n]
                i += n
                x = torch.zeros(len(rows), self.num_codebooks, longest, dtype=torch.long)  # pad code 0
                for r, j in enumerate(rows):
                    x[r, :, : len(codes[j])] = torch.as_tensor(np.asarray(codes[j]), dtype=torch.long).T
                if cuda:
                    x = x.pin_memory().to(self.device, non_blocking=True)
                # Stays on the device until ready: a pinned host buffer here would mean a
                # cudaHostAlloc, which synchronizes the device and stalls generation.
                parts.append((rows, self.mimi.decode(x).audio_values[:, 0].float()))  # [N, S]
            event = None
            if cuda:
                event = torch.cuda.Event()
                event.record(self._stream)
        self.decode_s += time.perf_counter() - t0
        return PendingAudio(self, [len(c) for c in codes], parts, event)


class PendingAudio:
    """Audio being decoded: rows in the order they were given."""

    def __init__(self, codec: MimiCodec, num_frames: list[int], parts, event):
        self.codec, self.num_frames, self.parts, self.event = codec, num_frames, parts, event

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> list[np.ndarray]:
        t0 = time.perf_counter()
        if self.event is not None:
            self.event.synchronize()
        spf = self.codec.samples_per_frame
        out = [np.zeros(0, dtype=np.float32) for _ in self.num_frames]
        stream = self.codec._stream
        for rows, audio in self.parts:
            if audio.is_cuda:  # copy on the (now idle) decode stream, not behind queued frames
                with torch.cuda.stream(stream):
                    audio = audio.cpu()
            audio = audio.numpy()
            for r, j in enumerate(rows):
                out[j] = np.ascontiguousarray(audio[r, : self.num_frames[j] * spf])
        self.codec.decode_s += time.perf_counter() - t0
        return out
