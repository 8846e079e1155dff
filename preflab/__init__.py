"""preflab: preference learning for language models, by both roads, measured."""

__version__ = "0.1.0"
