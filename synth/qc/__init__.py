"""Quality control of generated speech: per-take metrics, the scorer, the retake policy.

Layer 2: it imports `synth.engine` and `synth.errors` only. What drives QC over a run or an
existing dataset (the retake loop, the re-scoring command) is `synth.pipeline`'s.
"""
