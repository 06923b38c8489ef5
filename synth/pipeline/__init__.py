"""The pipeline layer: a dataset run from manifest to committed output.

Layer 3. It owns the typed run config, manifests and the shard plan, audio I/O, the voice
library, context planning and dialogue chains, the shard worker and its QC retake loop, what
a run's units and files are called in its store (`output`; the protocol itself is
`synth.store`'s), and the Ray side (actors, the dispatcher, the run).
It drives an engine only through `synth.engine.interface` and knows nothing about books.
Importing this package loads nothing: modules that the engine benchmark uses on a bare
GPU box (`chain`, `context_plan`, `audio_io`) need neither Ray nor pydantic.
"""
