"""experiment=open_r1_distill: open-r1's OpenR1-Distill-7B recipe shipped as an experiment. It is what the importer
makes of the recipe and its zero3 accelerate config (less the run folder and the Hub push, which depend on the
user), and its CPU miniature trains through the CLI as docs/recipes.md shows: the model and data swapped for
local ones, flash-attention and Liger (CUDA only) for sdpa and none."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from transformers import AutoTokenizer, GenerationConfig

from sft_exp.paths import asset_path
from tests.helpers import run_sft, write_base_model
from tests.recipes.recipes import ACCELERATE, RECIPES_DIR, compose_experiment, imported_experiment

DISTILL = RECIPES_DIR / "open-r1" / "OpenR1-Distill-7B__sft__config_distill.yaml"
# The miniature's overrides besides the model and the data (docs/recipes.md): CPU stand-ins for CUDA-only kernels.
CPU = ["model.attn_implementation=sdpa", "trainer.extra_args.use_liger_kernel=false"]


def test_the_shipped_experiment_is_the_imported_recipe(tmp_path):
    imported_experiment(DISTILL, tmp_path / "conf", ACCELERATE["zero3"])
    imported, run_dir = compose_experiment(tmp_path / "conf", DISTILL.stem)
    shipped, default_dir = compose_experiment(tmp_path / "none", "open_r1_distill")
    assert run_dir == yaml.safe_load(DISTILL.read_text())["output_dir"] and default_dir.startswith("outputs/runs/")
    imported, shipped = OmegaConf.to_container(imported), OmegaConf.to_container(shipped)
    assert imported["callbacks"].pop("push_to_hub")["repo_id"] == "OpenR1-Distill-7B"  # left to the user
    assert shipped == imported


@pytest.fixture(scope="module")
def miniature(tmp_path_factory):
    """`python -m sft_exp experiment=open_r1_distill` on a tiny local model (EOS <|endoftext|>) and the demo's rows."""
    tmp = tmp_path_factory.mktemp("mini")
    model = write_base_model(tmp / "model")
    rows = tmp / "rows.jsonl"
    rows.write_text("".join(asset_path("demo/train.jsonl").read_text().splitlines(keepends=True)[:48]))
    proc = run_sft(
        "experiment=open_r1_distill",
        f"model.name_or_path={model}",
        f"data.sources=[{{path:{rows}}}]",
        *CPU,
        "trainer.max_steps=3",
        f"hydra.run.dir={tmp / 'run'}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_the_miniature_trains_the_recipe_settings(miniature):
    summary = json.loads((miniature / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 3
    args = torch.load(miniature / "model" / "training_args.bin", weights_only=False)
    assert (args.learning_rate, args.lr_scheduler_type.value, args.lr_scheduler_kwargs) == (
        4e-5,
        "cosine_with_min_lr",
        {"min_lr_rate": 0.1},
    )
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_grad_norm) == (2, 8, 0.2)
    assert args.bf16 and args.gradient_checkpointing and args.save_strategy.value == "epoch"
    # save_strategy epoch: the epoch cut short by max_steps ends with a save, as in TRL (transformers' loop)
    assert [p.name for p in (miniature / "checkpoints").glob("checkpoint-*")] == ["checkpoint-3"]


def test_the_miniature_saves_the_recipe_eos_and_template(miniature):
    """eos_token <|im_end|>: the saved tokenizer's EOS, config.json's eos_token_id and a generation stop, as TRL
    sets all three; the saved template is the recipe's."""
    tokenizer = AutoTokenizer.from_pretrained(miniature / "model")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token == "<|im_end|>"
    assert json.loads((miniature / "model" / "config.json").read_text())["eos_token_id"] == im_end
    assert im_end in GenerationConfig.from_pretrained(miniature / "model").eos_token_id
    assert tokenizer.chat_template == yaml.safe_load(DISTILL.read_text())["chat_template"]
