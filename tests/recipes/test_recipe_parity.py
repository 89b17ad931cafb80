"""Parity: for every recipe in tests/assets/recipes, the TrainingArguments sft_exp builds from the imported
experiment equal those TRL's TrlParser builds from the same recipe, field by field for every field both have;
the data, model and hub settings mean what TRL's do. Differences by design are listed below with their reason.

TRL's side: TrlParser((ScriptArguments, SFTConfig, ModelConfig)) with open-r1's classes (which add its fields
to TRL's and change none), on the recipe modernised only where TRL 1.16 refuses it (recipes.MODERNISED).
sft_exp's side: `python -m sft_exp.import_recipe` into a config dir, composed as `--config-dir DIR
experiment=NAME` runs it, and sft_exp.train.training_arguments(cfg): what training_args.bin records.
"""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf
from transformers import TrainingArguments

from sft_exp.train import training_arguments
from tests.recipes.recipes import RECIPES, compose_experiment, imported_experiment, trl_parse

# TrainingArguments fields whose values differ by design: field -> why. Each is also checked for what it is.
BY_DESIGN = {
    "output_dir": "the recipe's output_dir is the run folder (hydra.run.dir, checked below); TrainingArguments' "
    "output_dir is its checkpoints/ folder, the final model goes to its model/ folder",
    "logging_first_step": "sft_exp logs the first step: its console line says the run started well",
    "disable_tqdm": "one readable line per logging step instead of tqdm's bar",
    "prediction_loss_only": "evaluation computes the loss (and token accuracy) without keeping logits; task "
    "evaluation generates apart",
    "remove_unused_columns": "sft_exp's collator needs every prepared column (position_ids, source ids, weights)",
    "push_to_hub": "a callback pushes at each save (callbacks.push_to_hub, checked below), not the Trainer",
    "hub_model_id": "the push callback's repo_id (checked below)",
    "data_seed": "TRL's None means the seed: sft_exp passes the seed itself (checked below)",
    "ddp_find_unused_parameters": "the ddp preset: every trained parameter gets a gradient each step, so DDP skips "
    "its search; transformers skips it too with gradient checkpointing (checked)",
}
# Different values that mean the same: field -> TRL's value -> sft_exp's.
SAME_MEANING = {
    "lr_scheduler_kwargs": (None, {}),  # no scheduler arguments
    "gradient_checkpointing_kwargs": (None, {"use_reentrant": False}),  # transformers 5's default kwargs
    "activation_checkpointing_kwargs": (None, {"use_reentrant": False}),
}


def _plain(value):
    return getattr(value, "value", value)  # enums (IntervalStrategy.STEPS) as their names


@pytest.fixture(scope="module", params=RECIPES, ids=lambda path: path.stem)
def both(request, tmp_path_factory):
    """(TRL's script, training and model arguments; sft_exp's composed config, its TrainingArguments, run folder)."""
    tmp = tmp_path_factory.mktemp(request.param.stem)
    script, trl_args, model = trl_parse(request.param, tmp)
    imported_experiment(request.param, tmp / "conf")
    cfg, run_dir = compose_experiment(tmp / "conf", request.param.stem)
    return script, trl_args, model, cfg, training_arguments(cfg), run_dir


def test_training_arguments_equal_trl_field_by_field(both):
    _, trl_args, _, _, ours, _ = both
    differ = {}
    for field in dataclasses.fields(TrainingArguments):
        theirs, mine = _plain(getattr(trl_args, field.name)), _plain(getattr(ours, field.name))
        if field.name in SAME_MEANING and (theirs, mine) == SAME_MEANING[field.name]:
            continue
        if theirs != mine and field.name not in BY_DESIGN:
            differ[field.name] = (theirs, mine)
    assert differ == {}


def test_the_differences_by_design_are_what_they_say(both):
    script, trl_args, model, cfg, ours, run_dir = both
    if trl_args.output_dir == "trainer_output":  # TRL's default folder: sft_exp's default run folder
        assert run_dir.startswith("outputs/runs/")
    else:
        assert run_dir == trl_args.output_dir
    assert ours.output_dir.endswith("/checkpoints")
    assert trl_args.data_seed is None and ours.data_seed == ours.seed == trl_args.seed
    assert ours.ddp_find_unused_parameters is False and (
        trl_args.gradient_checkpointing or cfg.memory._target_.endswith("NoMemoryStrategy")
    )
    # transformers saves a checkpoint at the last step with save_strategy steps: sft_exp when asked to
    assert cfg.trainer.save_final_checkpoint == (_plain(trl_args.save_strategy) == "steps")
    push = OmegaConf.to_container(cfg.callbacks).get("push_to_hub")
    if trl_args.push_to_hub:
        assert push["repo_id"] == trl_args.hub_model_id and push["strategy"] == _plain(trl_args.hub_strategy)
        assert push["private"] == bool(trl_args.hub_private_repo)
    else:
        assert push is None


def test_data_and_model_settings_mean_what_trl_does(both):
    script, trl_args, model, cfg, _, _ = both
    data = cfg.data
    assert (data.assistant_only_loss, data.completion_only_loss) == (
        trl_args.assistant_only_loss,
        trl_args.completion_only_loss,
    )
    assert (data.max_length, data.packing, data.packing_strategy) == (
        trl_args.max_length,
        trl_args.packing,
        trl_args.packing_strategy,
    )
    # TRL trains padding-free when asked, and always when it packs with bfd; sft_exp's packed rows are padding-free
    trl_padding_free = trl_args.padding_free or (trl_args.packing and trl_args.packing_strategy == "bfd")
    assert (data.padding_free or data.packing) == trl_padding_free
    assert data.num_proc == trl_args.dataset_num_proc
    assert cfg.model.eos_token == trl_args.eos_token and data.chat_template == trl_args.chat_template
    assert (cfg.model.name_or_path, cfg.model.revision, cfg.model.dtype) == (
        model.model_name_or_path,
        model.model_revision,
        model.dtype,
    )
    assert cfg.model.attn_implementation == (model.attn_implementation or "sdpa")  # transformers' choice
    assert cfg.loss._target_.endswith({"nll": "NLLLoss", "dft": "DFTLoss"}[trl_args.loss_type])


def test_the_same_rows_train_and_are_evaluated(both):
    """TRL trains on dataset[train split] and evaluates on dataset[test split] only when eval_strategy says so."""
    script, trl_args, _, cfg, _, _ = both
    source = cfg.data.sources[0]
    assert len(cfg.data.sources) == 1
    assert (source.path, source.subset, source.split) == (
        script.dataset_name,
        script.dataset_config,
        script.dataset_train_split,
    )
    if _plain(trl_args.eval_strategy) == "no":
        assert cfg.data.eval_split_size == 0 and not cfg.data.eval_sources
    else:
        held_out = cfg.data.eval_sources[0]
        assert (held_out.path, held_out.subset, held_out.split) == (
            script.dataset_name,
            script.dataset_config,
            script.dataset_test_split,
        )
    benchmarks = set(getattr(trl_args, "benchmarks", []))
    assert set(cfg.evals) == benchmarks  # no task evaluation but open-r1's benchmarks
