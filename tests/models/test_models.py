"""ModelLoader and the model presets: one source for weights and tokenizer unless asked, no demo recipe on a
pretrained model, and a tokenizer whose ids do not fit the embeddings stopped before training."""

from __future__ import annotations

import time

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoTokenizer

from sft_exp.config import AdamWConfig, TrainerConfig
from sft_exp.errors import ConfigError
from sft_exp.models.loader import ModelLoader
from sft_exp.paths import asset_path, config_dir
from sft_exp.preflight import validate_config
from tests.helpers import compose, run_sft, tiny_causal_lm

PRESETS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
BUILT_FROM_CONFIG = ("tiny", "tiny_moe")


@pytest.fixture
def local_model(tmp_path):
    """A folder holding a tiny pretrained-style model and its own tokenizer (the shipped one)."""
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    tiny_causal_lm("llama", vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_a_model_loader_from_one_place(preset):
    overrides = [f"model={preset}"] + (["model.name_or_path=some-org/some-model"] if preset == "hf" else [])
    loader = instantiate(compose(overrides).model)
    assert isinstance(loader, ModelLoader)
    assert loader.init_config is None or type(loader.init_config) is dict  # plain, not DictConfig
    if preset in BUILT_FROM_CONFIG:
        assert loader.name_or_path is None and loader.init_config["model_type"]
    else:  # weights from name_or_path, tokenizer from the same place unless the user sets model.tokenizer
        assert loader.name_or_path and loader.tokenizer is None and loader.init_config is None


@pytest.mark.parametrize("preset", BUILT_FROM_CONFIG)
def test_name_or_path_on_a_preset_built_from_config_stops_and_says_model_hf(preset, local_model):
    cfg = compose([f"model={preset}", f"model.name_or_path={local_model}"])
    with pytest.raises(ConfigError, match=rf"model=hf model.name_or_path={local_model}"):
        validate_config(cfg)
    # Dropping init_config does not sneak the demo tokenizer in either.
    cfg = compose([f"model={preset}", f"model.name_or_path={local_model}", "model.init_config=null"])
    with pytest.raises(ConfigError, match="demo tokenizer"):
        validate_config(cfg)


def test_name_or_path_on_the_default_stops_at_once_from_the_command_line(local_model):
    started = time.monotonic()
    proc = run_sft(f"model.name_or_path={local_model}", "logger=none", timeout=120)
    assert proc.returncode != 0
    assert f"model=hf model.name_or_path={local_model}" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 60  # no model or data loaded


def test_hf_preset_requires_name_or_path():
    with pytest.raises(ConfigError, match="model.name_or_path"):
        validate_config(compose(["model=hf"]))


@pytest.mark.parametrize("preset", ["hf", "smollm2_135m"])
def test_recipes_stay_off_pretrained_presets(preset, local_model):
    tiny = compose(["data=demo"])
    assert tiny.optimizer.lr == 2e-3 and tiny.trainer.max_steps == 1500  # the tiny_demo recipe applies there
    cfg = compose([f"model={preset}", f"model.name_or_path={local_model}", "data=demo"])
    assert cfg.optimizer.lr == AdamWConfig().lr
    assert cfg.trainer.max_steps == TrainerConfig().max_steps
    assert cfg.trainer.per_device_train_batch_size == TrainerConfig().per_device_train_batch_size


def test_hf_loads_the_folder_and_its_own_tokenizer(local_model):
    loader = instantiate(compose(["model=hf", f"model.name_or_path={local_model}", "model.dtype=float32"]).model)
    tokenizer = loader.load_tokenizer()
    model = loader.load_model(tokenizer)
    assert tokenizer.name_or_path == str(local_model)
    assert model.config.eos_token_id == tokenizer.eos_token_id and model.config.pad_token_id == tokenizer.pad_token_id
    assert model.dtype == torch.float32


def _bigger_tokenizer(tmp_path, added: int):
    tokenizer = AutoTokenizer.from_pretrained(asset_path("tokenizer"))
    tokenizer.add_special_tokens({"additional_special_tokens": [f"<extra_{i}>" for i in range(added)]})
    folder = tmp_path / "tokenizer"
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def test_a_tokenizer_larger_than_the_embeddings_is_an_error_that_says_what_to_do(local_model, tmp_path):
    folder, _ = _bigger_tokenizer(tmp_path, 3)
    loader = ModelLoader(name_or_path=str(local_model), tokenizer=str(folder))
    tokenizer = loader.load_tokenizer()
    with pytest.raises(ConfigError, match=r"model.tokenizer=null.*model.resize_embeddings=true"):
        loader.load_model(tokenizer)


def test_resize_embeddings_makes_room_for_added_tokens_and_logs_it(local_model, tmp_path, caplog):
    folder, big = _bigger_tokenizer(tmp_path, 3)
    loader = ModelLoader(name_or_path=str(local_model), tokenizer=str(folder), resize_embeddings=True)
    with caplog.at_level("WARNING", logger="sft_exp.models.loader"):
        model = loader.load_model(loader.load_tokenizer())
    assert model.get_input_embeddings().num_embeddings >= len(big)
    assert "resized the embeddings" in caplog.text and "3 added token" in caplog.text
    ids = big("<extra_2> hello", return_tensors="pt")["input_ids"]
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_model_built_from_config_gets_the_tokenizers_vocabulary():
    loader = instantiate(compose(["model=tiny"]).model)
    tokenizer = loader.load_tokenizer()
    model = loader.load_model(tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_a_missing_gguf_file_names_the_files_there(local_model):
    (local_model / "model.Q8_0.gguf").write_bytes(b"")
    cfg = compose(["model=hf", f"model.name_or_path={local_model}", "model.gguf_file=model.Q4.gguf"])
    with pytest.raises(ConfigError, match=r"model.gguf_file=model.Q4.gguf.*model.Q8_0.gguf"):
        validate_config(cfg)
