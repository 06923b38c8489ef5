"""synth: distributed batch speech-dataset synthesis with Sesame's CSM.

The package is three layers, each a subpackage that imports only from the layers below it:

    synth.engine    the model: a loaded CSM that turns requests into codes and audio
                    (the fast continuous-batching engine, the transformers reference,
                    checkpoints, the codec); knows nothing of manifests, files or Ray
    synth.pipeline  a dataset run: config, manifests, the shard plan, the shard worker,
                    the output directory and its commit protocol, the Ray dispatcher
    synth.book      long-form books: text to chapters, rendering through a run,
                    stitching, M4B

On top sit the tools that use them: `synth.bench` (benchmarks) and `synth.cli` (the
`synth` command). `synth.errors` holds the base of every error synth raises on purpose.
"""

__version__ = "0.1.0"
