"""Shared fixtures: a tiny word tokenizer and tiny random models, built offline in the test."""

from __future__ import annotations

import pytest

from preflab.tiny import build_word_tokenizer, save_tiny_model

WORDS = (
    "the a movie film was is great good bad awful not very really but and plot acting "
    "story it i liked hated fine boring fun this that so quite"
).split()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama (hidden 32) with the word tokenizer, saved as an HF directory."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), WORDS, arch="llama")
