"""Render an EPUB, Markdown or plain-text book to one audio file per chapter, in one narrator's voice (`synth book`).

    python jobs/render_book.py --config configs/demo.yaml --book examples/books/alice-ch1-3.md \
        --voice narrator --output out/alice
    ray job submit --working-dir . -- python jobs/render_book.py --config ... --book ... --voice ... --output ...

Options: `python jobs/render_book.py --help`, or `synth book --help` (`synth.cli`).
"""

import sys

from synth.cli import main

if __name__ == "__main__":
    sys.exit(main(["book", *sys.argv[1:]]))
