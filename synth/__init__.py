"""synth: a data factory for Chinese AI-safety guard-pretraining corpora."""

__version__ = "0.1.0"
