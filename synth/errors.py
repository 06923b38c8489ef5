"""The base class of every error synth raises on purpose.

A `SynthError` always carries a message meant for the user: it names the thing at
fault (a config field, a manifest row, a file, an output directory) and what to do.
Command lines catch it, print the message and exit 2; anything else is a bug. Each
layer subclasses it where the error arises (`ConfigError`, `ManifestError`,
`AudioError`, `OutputError`, `RunError`, `BookError`, ...), keeping the built-in base
that describes its kind (`ValueError` for bad input, `RuntimeError` for a run that
cannot go on).
"""


class SynthError(Exception):
    """An error with a message for the user; see the module docstring."""
