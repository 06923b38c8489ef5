"""The voice library: named reference clips that condition generated turns.

A config names voices (reference clip + transcript + speaker id); a manifest turn or
script says `voice: NAME` instead of carrying a clip. This module owns turning those
names into speakers and voice prompts for a script (or a `RowError` naming the row and
the problem), and the per-run code cache: each reference is Mimi-encoded once, on one
actor, and its codes [T, K] are committed as the unit `voice-<content hash>` (the file
OUT/_voices/<content hash>.npy, a name `synth.pipeline.output` gives), which every actor
reads instead of encoding again, but only if its bytes are the ones its marker recorded:
a cache file changed by anything but synth is encoded again, never used. It knows
nothing about Ray or the model math.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np

from synth.engine.codec import clip_key
from synth.engine.interface import Segment
from synth.pipeline.audio_io import AudioError
from synth.pipeline.config import VoiceConfig, unknown_voice
from synth.pipeline.manifest import RowError, Script
from synth.pipeline.output import voice_codes_file, voice_unit
from synth.store.store import Store


@dataclass(frozen=True)
class Voice:
    name: str
    speaker: int
    segment: Segment  # the reference as a context turn: transcript + clip [samples] float32


class VoiceLibrary:
    """The configured voices, loaded lazily on one worker.

    read_clip: ref -> float32 mono at the codec rate, raising AudioError (the worker's
    cached clip reader). engine: encodes missing codes (`encode_clips`) and is told the
    codes of every voice it loads (`remember_codes`), so it never encodes a voice itself.
    """

    def __init__(self, voices: dict[str, VoiceConfig], store: Store, engine,
                 read_clip: Callable[[str], np.ndarray]):
        self.configs = voices
        self.store = store
        self.engine = engine
        self.read_clip = read_clip
        self._loaded: dict[str, Voice | str] = {}  # name -> voice, or why it cannot be used
        self.encoded = 0  # references this library had to encode (not found in OUT/_voices)

    def _codes(self, clip: np.ndarray) -> np.ndarray:
        """The clip's codes [T, K] int16, from the run's cache (its bytes checked against their
        marker) or encoded now and committed. A cache file that is not what synth committed (cut
        short, changed, unmarked) is encoded again and replaced."""
        key = clip_key(clip)
        path = voice_codes_file(key)
        data = self.store.read_verified(voice_unit(key), path)
        if data is not None:
            try:
                return np.load(io.BytesIO(data))
            except (ValueError, EOFError, OSError):
                pass
        (codes,) = self.engine.encode_clips([clip])
        self.encoded += 1
        buffer = io.BytesIO()
        np.save(buffer, codes.astype(np.int16))
        self.store.retract(voice_unit(key))
        self.store.commit(voice_unit(key), [self.store.write(path, buffer.getvalue())])
        return codes

    def get(self, name: str) -> Voice | str:
        """The voice, or a message saying why it cannot be used."""
        if name in self._loaded:
            return self._loaded[name]
        config = self.configs.get(name)
        if config is None:
            loaded: Voice | str = unknown_voice(name, self.configs)
        else:
            try:
                clip = self.read_clip(config.audio)
                self.engine.remember_codes(clip, self._codes(clip))
                loaded = Voice(name, config.speaker, Segment(config.speaker, config.text, clip))
            except AudioError as e:
                loaded = f"voice {name!r}: cannot use its reference clip: {e}"
        self._loaded[name] = loaded
        return loaded

    def prepare(self) -> dict:
        """Load (encoding where needed) every configured voice; returns what happened, for run.json."""
        before = self.encoded
        status = {}
        for name in self.configs:
            voice = self.get(name)
            status[name] = {"error": voice} if isinstance(voice, str) else {
                "speaker": voice.speaker, "seconds": round(len(voice.segment.audio) / self.engine.sample_rate_hz, 3)}
        return {"voices": status, "encoded": self.encoded - before}

    def resolve(self, script: Script) -> tuple[list[int], list[Voice]] | RowError:
        """Every turn's speaker, and the script's voice prompts in first-mention order."""
        names = list(dict.fromkeys(([script.voice] if script.voice else []) + [t.voice for t in script.turns if t.voice]))
        voices: list[Voice] = []
        for name in names:
            voice = self.get(name)
            if isinstance(voice, str):
                turn = next((i for i, t in enumerate(script.turns) if t.voice == name), None)
                return RowError(script.row, script.id, "voice", voice, turn)
            clash = next((v for v in voices if v.speaker == voice.speaker), None)
            if clash is not None:
                return RowError(script.row, script.id, "voice",
                                f"voices {clash.name!r} and {name!r} both speak as speaker {voice.speaker}")
            voices.append(voice)
        by_name = {v.name: v for v in voices}
        speakers = []
        for i, turn in enumerate(script.turns):
            voice = by_name.get(turn.voice or script.voice or "")
            if turn.speaker is None:
                if voice is None:  # the manifest allows this only when a voice is named
                    return RowError(script.row, script.id, "validate", "turn names neither speaker nor voice", i)
                speakers.append(voice.speaker)
                continue
            if turn.voice and turn.speaker != by_name[turn.voice].speaker:
                return RowError(script.row, script.id, "voice",
                                f"speaker {turn.speaker} contradicts voice {turn.voice!r} (speaker "
                                f"{by_name[turn.voice].speaker})", i)
            speakers.append(turn.speaker)
        return speakers, voices
