"""synth: distributed batch speech-dataset synthesis with Sesame's CSM.

The package is layers of subpackages, each importing only from its own layer or lower ones
(`tests/test_architecture.py` checks it):

    0  synth.errors    the base of every error synth raises on purpose
    1  synth.engine    the model: a loaded CSM that turns requests into codes and audio
                       (the fast continuous-batching engine, the transformers reference,
                       checkpoints, the codec); knows nothing of manifests, files or Ray
    1  synth.store     the committed store: the one protocol every command writes through
                       (claim, lease, identity, units with markers, recovery, verify)
    2  synth.qc        quality control: the metrics of a take, the retake policy
    2  synth.text      spoken-form text: the normaliser, the lexicon
    3  synth.pipeline  a dataset run: config, manifests, the shard plan, the shard worker,
                       the dataset's names in its store, the Ray dispatcher
    4  synth.book      long-form books: text to chapters, rendering through a run, M4B
    4  synth.export    exports, the dataset card and the run report
    4  synth.train     fine-tuning on Ray Train, importing recorded corpora
    5  synth.bench     benchmarks and the device check
    6  synth.cli       the `synth` command
"""

__version__ = "0.1.0"
