"""Write examples/dialogues.parquet, the demo manifest (run from the repo root).

Two scripted dialogues whose first turns carry recorded context clips (espeak-ng,
22.05 kHz: a real resampling case), one whose turns name voices from the config's
library, plus one-turn scripts with no context. Every generated turn of a script is
conditioned on the turns before it.
"""

import os

from synth.pipeline.manifest import write_manifest

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = [
    {
        "id": "podcast-001",
        "turns": [
            {"speaker": 0, "text": "Good evening. This is the narrator speaking, slowly and clearly.",
             "audio": "voices/narrator.wav"},
            {"speaker": 1, "text": "Hi! Thanks for having me on the show.", "audio": "voices/guest.wav"},
            {"speaker": 0, "text": "So tell us, how did the project start?", "audio": None},
            {"speaker": 1, "text": "It started with a single script and a lot of coffee.", "audio": None},
        ],
        "seed": 7,
        "max_audio_seconds": None,
    },
    {
        "id": "podcast-002",
        "turns": [
            {"speaker": 1, "text": "Hi! Thanks for having me on the show.", "audio": "voices/guest.wav"},
            {"speaker": 1, "text": "Numbers like 1999 and 42 are read out loud.", "audio": None},
        ],
        "seed": None,
        "max_audio_seconds": 3.0,
    },
    {
        "id": "interview-003",  # voices from the config's library (configs/demo.yaml) instead of clips
        "turns": [
            {"speaker": None, "text": "Welcome back. Today we talk about synthetic speech.", "audio": None,
             "voice": "narrator"},
            {"speaker": None, "text": "Glad to be here. It is a fascinating topic.", "audio": None, "voice": "guest"},
            {"speaker": None, "text": "Let us start with the basics.", "audio": None, "voice": "narrator"},
        ],
        "seed": 11,
        "max_audio_seconds": None,
    },
    {"id": "line-001", "turns": [{"speaker": 0, "text": "Call me Ishmael.", "audio": None}],
     "seed": None, "max_audio_seconds": None},
    {"id": "line-002", "turns": [{"speaker": 2, "text": "It was the best of times, it was the worst of times.",
                                  "audio": None}], "seed": 3, "max_audio_seconds": None},
    {"id": "line-003", "turns": [{"speaker": 3, "text": "The quick brown fox jumps over the lazy dog.",
                                  "audio": None}], "seed": None, "max_audio_seconds": 2.0},
]

if __name__ == "__main__":
    print("wrote", write_manifest(os.path.join(HERE, "dialogues.parquet"), ROWS))
