"""Reading a finished (or partly finished) output into the formats training stacks load.

Exports (Lhotse Shar, NeMo JSON lines, WebDataset tar shards) run part by part on Ray
with the run's commit rules (`synth.export.job`); the dataset card (`card`) and the HTML
run report (`report`) describe an output in place. Nothing here generates audio.
Layer 4: it reads outputs through `synth.pipeline` and writes through `synth.store`.
"""
