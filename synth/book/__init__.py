"""The book layer (4): long-form text rendered as an audiobook through an ordinary run.

It owns reading a book into chapters of sentence-sized chunks (`text`), turning them
into a manifest of passage chains and assembling chapter files from the run's output
(`render`), stitching with pauses, fades, timing and subtitles (`stitch`), and the
whole book as one M4B (`m4b`). It uses the pipeline to synthesize and knows nothing
about the model beyond what the output dataset holds.
"""
