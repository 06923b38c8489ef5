"""Measuring synth: scripts that print tables, recorded in BENCHMARKS.md (layer 5).

`throughput`: the fast engine against the transformers reference on one workload, with QC
(`qc_stage`) and dialogues; `warmup`: cold against cached compile; `frame_loop`: the host's
time per frame; `frame_profile`: one frame's kernels; `gpu_check`: every device figure in one
call (`config_reader` reads the production config without pydantic). These run without Ray
or pydantic, so they work on a bare GPU box. `driver_memory`: the driver's time and memory on
a large manifest. Speed is measured here, never in tests.
"""
