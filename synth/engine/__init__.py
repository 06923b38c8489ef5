"""The engine layer: a loaded CSM that turns generation requests into Mimi codes and audio.

It owns the seam every engine satisfies (`interface`), checkpoint loading, the lean
static-cache model (`lean_csm`), the per-frame step (`frame_step`), continuous batching
(`scheduler`), the codec (`codec`), the two engines (`fast_engine`, `reference_engine`)
and the tiny offline checkpoint. It is pure torch and transformers: it knows nothing
about manifests, output files, configs or Ray, and runs on a GPU box that has neither
Ray nor pydantic.
"""
