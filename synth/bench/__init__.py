"""Measuring synth: scripts that print tables, recorded in BENCHMARKS.md.

`throughput`: the fast engine against the transformers reference on one workload
(runs without Ray or pydantic, so it works on a bare GPU box). `driver_memory`: the
driver's time and memory on a large manifest. Speed is measured here, never in tests.
"""
