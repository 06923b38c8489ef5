"""Fine-tuning CSM on synth datasets: train-ready batches from stored codes, the Ray Train job, recorded data in.

Layer 4: reads outputs of synth.pipeline and models through synth.engine; knows nothing of books, exports or benchmarks.
"""
