"""`python -m synth ...`: the `synth` command without an install (see `synth.cli`)."""

import sys

from synth.cli import main

sys.exit(main())
