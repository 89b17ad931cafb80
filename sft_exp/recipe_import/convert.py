"""A recipe -> rows: every field through its handler (this table says which), then TRL's defaults for the
fields sft_exp sets from its own groups, so the experiment trains what `trl sft` would."""

from __future__ import annotations

from typing import Callable

from sft_exp.recipe_import import hub_and_evals as hub
from sft_exp.recipe_import import model_data as md
from sft_exp.recipe_import import training as tr
from sft_exp.recipe_import.known import OPEN_R1_FIELDS, STALE, TRL_DEFAULTS, training_argument_fields, trl_fields
from sft_exp.recipe_import.model_data import Unmapped
from sft_exp.recipe_import.rows import Recipe, Row

Handler = Callable[[Recipe, object], Row]

# recipe field (today's name) -> handler. A TrainingArguments field not listed passes through to the trainer
# (tr.training_argument); any other field has no sft_exp form and stops the import.
HANDLERS: dict[str, Handler] = {
    # ModelConfig
    "model_name_or_path": md.model_name_or_path, "model_revision": md.model_revision, "dtype": md.dtype,
    "attn_implementation": md.attn_implementation, "trust_remote_code": md.trust_remote_code,
    "use_peft": md.use_peft, **{name: md.lora_field(name) for name in (*md.LORA_KEYS, "lora_task_type", "use_dora",
                                                                     "load_in_4bit")},
    "load_in_8bit": tr.only_default("load_in_8bit: sft_exp quantizes in 4 bit only (peft=qlora)", False),
    "lora_target_parameters": tr.only_default("lora_target_parameters: no sft_exp form (LoRA on parameters)", None),
    # ScriptArguments, open-r1's dataset_mixture
    "dataset_name": md.dataset_name, "dataset_config": md.dataset_config, "dataset_train_split": md.dataset_train_split,
    "dataset_test_split": md.dataset_test_split, "dataset_mixture": md.dataset_mixture,
    "dataset_streaming": tr.only_default("dataset_streaming: sft_exp tokenizes a source once into the "
                                                "datasets cache instead of streaming it (set max_samples for a part)", False),
    "ignore_bias_buffers": tr.only_default("ignore_bias_buffers: no sft_exp form", False),
    # SFTConfig: data
    "max_length": md.max_length, "packing": md.packing, "packing_strategy": md.packing_strategy,
    "padding_free": md.padding_free, "assistant_only_loss": md.assistant_only_loss,
    "completion_only_loss": md.completion_only_loss, "dataset_num_proc": md.dataset_num_proc,
    "dataset_text_field": md.dataset_text_field, "eos_token": md.eos_token, "chat_template_path": md.chat_template_path,
    "truncation_mode": md.truncation_mode, "loss_type": md.loss_type, "model_init_kwargs": md.model_init_kwargs,
    "activation_offloading": tr.activation_offloading,
    "dataset_kwargs": tr.only_default("dataset_kwargs: no sft_exp form (sft_exp always prepares the data)", None),
    "pad_token": tr.only_default("pad_token: no sft_exp form (the tokenizer's pad token, else its EOS)", None),
    "pad_to_multiple_of": tr.only_default("pad_to_multiple_of: no sft_exp form", None, "auto"),
    "eval_packing": tr.only_default("eval_packing: sft_exp does not pack eval rows", None),
    "shuffle_dataset": tr.not_read("sft_exp shuffles the mixed rows before packing, and the sampler every epoch"),
    # open-r1's SFTConfig
    "chat_template": md.chat_template, "system_prompt": md.system_prompt, "callbacks": hub.callbacks,
    "benchmarks": hub.benchmarks, "hub_model_revision": hub.hub_model_revision,
    "push_to_hub_revision": tr.not_read("not read by open-r1's sft.py (its `callbacks` list is)"),
    "overwrite_hub_revision": tr.not_read("not read by open-r1's sft.py"),
    "wandb_entity": tr.wandb_field("entity"), "wandb_project": tr.wandb_field("project"),
    "wandb_run_group": tr.wandb_field("group"), "run_name": tr.wandb_field("name"),
    # TrainingArguments fields sft_exp sets from its own groups
    "learning_rate": tr.learning_rate, "weight_decay": tr.weight_decay, "adam_beta1": tr.adam_beta,
    "adam_beta2": tr.adam_beta, "adam_epsilon": tr.adam_epsilon, "optim": tr.optim,
    "optim_args": tr.only_default("optim_args: set the optimizer group's fields (optimizer.<field>)", None),
    "warmup_steps": tr.warmup_steps, "bf16": tr.precision, "fp16": tr.precision,
    "gradient_checkpointing": tr.gradient_checkpointing,
    "gradient_checkpointing_kwargs": tr.gradient_checkpointing_kwargs, "seed": tr.seed, "data_seed": tr.data_seed,
    "output_dir": tr.output_dir, "overwrite_output_dir": tr.overwrite_output_dir, "report_to": tr.report_to,
    "logging_strategy": tr.logging_strategy, "save_strategy": tr.save_strategy, "eval_strategy": tr.eval_strategy,
    "eval_steps": tr.eval_steps, "resume_from_checkpoint": tr.resume_from_checkpoint,
    "use_liger_kernel": tr.use_liger_kernel, "env": tr.env,
    "do_train": tr.not_read("read only by scripts: sft_exp trains"),
    "do_eval": tr.not_read("read only by scripts (open-r1's evaluates once after training): sft_exp evaluates "
                           "after training whenever it has held-out rows"),
    "do_predict": tr.only_default("do_predict: no sft_exp form", False),
    "push_to_hub": hub.push_to_hub, "hub_model_id": hub.hub_field("repo_id"), "hub_strategy": hub.hub_field("strategy"),
    "hub_private_repo": hub.hub_field("private"), "hub_token": hub.hub_token,
    "deepspeed": tr.only_default("deepspeed: give the DeepSpeed settings with --accelerate-config or "
                                       "distributed=deepspeed distributed.training_args.deepspeed...", None),
    "fsdp": tr.only_default("fsdp: give it with --accelerate-config or distributed=fsdp", None),
}  # fmt: skip

# TRL defaults that are not written out: where sft_exp's own choice is the way to get TRL's behaviour.
NOT_WRITTEN = {"bf16", "fp16", "adam_beta2"}


def handler_for(name: str, owners: dict[str, str]) -> Handler:
    if name in HANDLERS:
        return HANDLERS[name]
    if name in training_argument_fields():
        return tr.training_argument(name)
    if name in owners or name in OPEN_R1_FIELDS:
        raise Unmapped(f"{name}: {owners.get(name, 'open-r1')} field with no sft_exp form")
    raise Unmapped(f"{name}: not a field of TRL's ScriptArguments, SFTConfig or ModelConfig, nor of open-r1's")


def _row(recipe: Recipe, name: str, value, owners: dict) -> Row:
    row = handler_for(name, owners)(recipe, value)
    row.field = name
    return row


def convert(recipe: Recipe) -> tuple[list[Row], list[tuple[str, str]]]:
    """(rows, unmapped): each recipe field's row, TRL's defaults for the fields it leaves out, and the
    (field, why) of every field with no sft_exp form."""
    owners = trl_fields()
    rows, unmapped = [], []
    for name in recipe.fields:
        today = STALE.get(name) or name
        try:
            if today != name and recipe.fields.count(today):
                row = Row(name, info=f"not read: {today} is set too")
            else:
                row = _row(recipe, today, recipe.data[name], owners)
        except Unmapped as missing:
            unmapped.append((name, missing.why))
            continue
        row.field, row.stale = name, (STALE.get(name) if name in STALE else None)
        rows.append(row)
    for name in TRL_DEFAULTS:
        if recipe.has(name) or name in NOT_WRITTEN:
            continue
        row = _row(recipe, name, TRL_DEFAULTS[name], owners)
        row.default = True
        rows.append(row)
    if not any(recipe.has(n) for n in ("bf16", "fp16")):
        rows.append(Row("bf16", tr.precision(recipe, None).settings, info="bf16 unless fp16", default=True))
    return rows, unmapped
