"""Fixtures of the evaluation tests: the shipped tokenizer and a tiny model on it (helpers in helpers.py)."""

from __future__ import annotations

import pytest

from sft_exp.paths import asset_path
from tests.evaluation.helpers import tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))


@pytest.fixture(scope="session")
def model(tokenizer):
    return tiny_model(tokenizer)
