"""The engine layer (1): a loaded CSM that turns generation requests into Mimi codes and audio.

It owns the seam every engine satisfies (`interface`), checkpoint loading
(`checkpoint`), prompts (`prompt`), the stop rules (`stop`), the lean static-cache model
(`lean_csm`), the per-frame step (`frame_step`), continuous batching (its `policy`, which
decides without torch, and the `scheduler`, which executes; what a slot's cache holds:
`held_cache`; work from other threads: `inbox`), the
codec (`codec`), the two engines (`fast_engine` with its `options`, `reference_engine`)
and the offline random checkpoints (`tiny_checkpoint`). It is pure torch and
transformers: it knows nothing about manifests, output files, configs or Ray, and runs
on a GPU box that has neither Ray nor pydantic.
"""
