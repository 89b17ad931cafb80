"""Every imported recipe trains: 3 steps on CPU, in this process, with the model and the data swapped for local
ones (`pytest -m slow tests/recipes`). The overrides, all of them, and why:

- model.name_or_path: a tiny random Qwen2 folder (tests.helpers.write_base_model) for the recipe's hub model;
- data.sources (and data.eval_sources, where the recipe evaluates): the demo's conversations for its hub dataset;
- trainer.max_steps=3;
and what a CPU machine without network cannot do, which the recipe asks of a GPU cluster:
- model.attn_implementation=sdpa where the recipe says flash_attention_2 (flash-attn runs on CUDA only);
- use_liger_kernel=false (Liger's kernels are Triton, CUDA only);
- no hub push callbacks (no network: the push callback refuses to start offline);
- no benchmark tasks (open-r1's benchmarks are hub datasets).
Everything else (batch sizes, accumulation, schedule, precision, checkpointing, packing, template, eos, saving,
logging to W&B offline) is the recipe's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sft_exp.paths import asset_path
from sft_exp.train import run
from tests.helpers import write_base_model
from tests.recipes.recipes import RECIPES, compose_experiment, imported_experiment, trl_parse

ROWS = 96  # the demo's first rows: enough for 3 steps of the largest recipe batch (16 x 1, 2 x 8, 4 x 4)


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """(a tiny pretrained-model folder, a local conversations file)."""
    folder = tmp_path_factory.mktemp("local")
    rows = folder / "rows.jsonl"
    rows.write_text("".join(asset_path("demo/train.jsonl").read_text().splitlines(keepends=True)[:ROWS]))
    return write_base_model(folder / "model"), rows


def swaps(cfg, model, rows) -> list[str]:
    """The overrides of the module docstring, for this recipe's composed config."""
    overrides = [f"model.name_or_path={model}", f"data.sources=[{{path:{rows}}}]", "trainer.max_steps=3"]
    if cfg.data.eval_sources:
        overrides.append(f"data.eval_sources=[{{path:{rows},max_samples:8}}]")
    if cfg.model.attn_implementation == "flash_attention_2":
        overrides.append("model.attn_implementation=sdpa")
    if cfg.trainer.extra_args.get("use_liger_kernel"):
        overrides.append("trainer.extra_args.use_liger_kernel=false")
    overrides += [f"~callbacks.{name}" for name in cfg.callbacks if name.startswith("push_to_hub")]
    overrides += [f"~evals.{name}" for name in cfg.evals]
    return overrides


@pytest.mark.slow  # 4-16 s each, 80 s for the 8 on 2 cores; the default suite trains open_r1_distill's miniature
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_each_imported_recipe_trains_three_steps_on_cpu(recipe, local, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    imported_experiment(recipe, tmp_path / "conf")
    cfg, _ = compose_experiment(tmp_path / "conf", recipe.stem)
    cfg, _ = compose_experiment(tmp_path / "conf", recipe.stem, swaps(cfg, *local))
    run(cfg)
    folder = Path(cfg.run_dir)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 3
    trained = torch.load(folder / "model" / "training_args.bin", weights_only=False)
    _, trl_args, _ = trl_parse(recipe, tmp_path)
    for name in (
        "learning_rate",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "lr_scheduler_type",
        "max_grad_norm",
        "weight_decay",
        "bf16",
        "gradient_checkpointing",
        "save_strategy",
        "seed",
    ):
        assert getattr(trained, name) == getattr(trl_args, name), name
