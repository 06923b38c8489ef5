"""synth: distributed batch speech-dataset synthesis with Sesame's CSM."""

__version__ = "0.1.0"
