"""The Ray actor: one process holding one loaded model for its whole life.

This module owns what an actor does when the dispatcher calls it: load the engine once
(its constructor), say what it loaded (`ready`), prepare the voice library once per run
(`prepare_voices`), and run shards through a `synth.pipeline.worker.ShardWorker`,
marking each done in the output once all its parts are committed (`run_shard`). The
class is plain Python: `synth.pipeline.runner` makes it a Ray actor, and it knows
nothing about other actors or the dispatch loop.
"""

from __future__ import annotations

import math
import os

from synth.pipeline import storage
from synth.pipeline.config import SynthConfig
from synth.pipeline.faults import crash_point
from synth.pipeline.manifest import open_manifest
from synth.pipeline.output import ShardSummary
from synth.pipeline.plan import Shard


class SynthActor:
    """One model per process for the actor's whole life; `run_shard` does the work."""

    def __init__(self, config_dict: dict, input_uri: str, output_uri: str, run_id: str | None = None):
        """run_id: the run whose lease this actor commits under (it commits nothing once another
        run holds the output's lease)."""
        import torch

        from synth.pipeline.worker import ShardWorker, load_engine

        config = SynthConfig.model_validate(config_dict)
        torch.set_num_threads(config.actors.torch_threads or max(1, math.ceil(config.actors.num_cpus)))
        self.engine = load_engine(config)
        out = storage.resolve(output_uri)
        manifest = open_manifest(input_uri)
        self.worker = ShardWorker(config, self.engine, manifest, out, run_id=run_id, log=lambda m: print(m, flush=True))
        self.output = self.worker.output

    def ready(self) -> dict:
        return {"pid": os.getpid(), **self.engine.describe().to_dict()}

    def prepare_voices(self) -> dict:
        """Encode every configured voice that OUT/_voices lacks (once per run, on one actor)."""
        return self.worker.voices.prepare()

    def run_shard(self, shard: Shard) -> ShardSummary:
        encoded_before = self.worker.voices.encoded
        commits = self.worker.run_shard(shard)
        summary = ShardSummary.of(shard.index, commits, voice_encodes=self.worker.voices.encoded - encoded_before)
        crash_point("shard-parts-committed")
        self.output.commit_shard(summary)
        crash_point("shard-done")
        return summary
