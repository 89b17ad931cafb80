"""Fixtures for the data tests; the builders themselves live in builders.py (`from tests.data.builders import`)."""

from __future__ import annotations

import pytest

from tests.data.builders import make_word_tokenizer


@pytest.fixture
def word_tokenizer():
    return make_word_tokenizer()
