"""The Ray actor: one process holding one loaded model for its whole life.

This module owns what an actor does when the dispatcher calls it: load the engine once
(its constructor), say what it loaded (`ready`), prepare the voice library once per run
(`prepare_voices`), and run shards through a `synth.pipeline.worker.ShardWorker` on
exactly the manifest files the plan lists (`run_shard`; a retried shard runs its scripts
isolated). The class is plain Python: `synth.pipeline.runner` makes it a Ray actor, and
it knows nothing about other actors or the dispatch loop.
"""

from __future__ import annotations

import math
import os

from synth.pipeline.config import SynthConfig
from synth.pipeline.manifest import open_planned
from synth.pipeline.output import DATASET_KINDS, ShardSummary
from synth.pipeline.plan import Shard
from synth.store.faults import crash_point, raise_point
from synth.store.store import Store


class SynthActor:
    """One model per process for the actor's whole life; `run_shard` does the work."""

    def __init__(self, config_dict: dict, input_uri: str, manifest_files: list[tuple[str, int]], output_uri: str,
                 kind: str = "run", run_id: str | None = None, settings: str | None = None):
        """manifest_files: (name under the input, rows) of each planned file; kind: the output's store
        kind; run_id: the run whose lease this actor commits under (it commits nothing once another
        run holds the output's lease); settings: the hash of the run's settings, for its markers."""
        import torch

        from synth.pipeline.worker import ShardWorker, load_engine

        config = SynthConfig.model_validate(config_dict)
        torch.set_num_threads(config.actors.torch_threads or max(1, math.ceil(config.actors.num_cpus)))
        self.engine = load_engine(config)
        store = Store.at_uri(output_uri, DATASET_KINDS[kind], run_id=run_id, settings=settings)
        self.worker = ShardWorker(config, self.engine, None, store, log=lambda m: print(m, flush=True))
        self.input = (input_uri, manifest_files)

    def ready(self) -> dict:
        return {"pid": os.getpid(), **self.engine.describe().to_dict()}

    def prepare_voices(self) -> dict:
        """Encode every configured voice that OUT/_voices lacks (once per run, on one actor)."""
        return self.worker.voices.prepare()

    def run_shard(self, shard: Shard, attempt: int = 1) -> ShardSummary:
        """Run one shard (its scripts isolated from the second attempt on); what it committed."""
        raise_point("shard", str(shard.index))  # fault-injection tests: a shard that fails every attempt
        if self.worker.manifest is None:  # opened here, not at load: a changed input stops the run, not the actor
            self.worker.manifest = open_planned(*self.input)
        encoded_before = self.worker.voices.encoded
        commits = self.worker.run_shard(shard, isolate=attempt > 1)
        crash_point("shard-parts-committed")
        return ShardSummary.of(shard.index, commits, voice_encodes=self.worker.voices.encoded - encoded_before)
