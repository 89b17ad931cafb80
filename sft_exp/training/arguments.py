"""Where each TrainingArguments field comes from in sft_exp, and the fields a run's groups set.

sft_exp's groups own some TrainingArguments fields: the optimizer group sets the learning rate, weight decay
and betas, the memory group gradient checkpointing, `seed` the seeds, the run folder the output dir, the
logger group report_to. `group_arguments` gives those fields their values (so `training_args.bin` says what
trained); `refuse_owned_extra_args` refuses them in `trainer.extra_args`, naming the key that sets them; and
`moved_key_message` answers a TRL user who types a TrainingArguments / SFTConfig name under `trainer.`.
Torch-free: preflight and the compose-time messages use it before torch loads.
"""

from __future__ import annotations

from typing import Any, Optional

from sft_exp.errors import ConfigError, did_you_mean

# TrainingArguments fields a group sets -> the override that sets it ({value}: the value the user gave).
OWNED_BY_GROUPS = {
    "learning_rate": "optimizer.lr={value}",
    "weight_decay": "optimizer.weight_decay={value}",
    "adam_beta1": "optimizer.betas=[{value},0.999]",
    "adam_beta2": "optimizer.betas=[0.9,{value}]",
    "adam_epsilon": "optimizer.eps={value}",
    "optim": "optimizer=adamw (optimizer.fused=true for adamw_torch_fused), optimizer=sgd, or any torch optimizer "
    "class: optimizer._target_=torch.optim.<Class>",
    "optim_args": "optimizer.<argument>=<value> (the optimizer group's own keys)",
    "optim_target_modules": "optimizer._target_=<your optimizer class> (sft_exp builds the optimizer from the "
    "optimizer group, never from `optim`)",
    "gradient_checkpointing": "memory=checkpointing",
    "gradient_checkpointing_kwargs": "memory=checkpointing",
    "activation_checkpointing": "memory=checkpointing",
    "activation_checkpointing_kwargs": "memory=checkpointing",
    "bf16": "trainer.precision=bf16",
    "fp16": "trainer.precision=fp16",
    "seed": "seed={value}",
    "data_seed": "seed={value} (one seed for the model, the data order and the split)",
    "output_dir": "hydra.run.dir={value} (checkpoints go to its checkpoints/ folder)",
    "overwrite_output_dir": "nothing: sft_exp never overwrites a run folder (a relaunch into it resumes; a new "
    "hydra.run.dir starts afresh)",
    "resume_from_checkpoint": "resume_from_checkpoint={value}",
    "report_to": "logger=wandb, logger=[wandb,tensorboard] or logger=none",
    "run_name": "logger.wandb.name={value}",
    "logging_dir": "nothing: each logger writes in the run folder (wandb/, tensorboard/, mlflow/)",
    "eval_strategy": "trainer.eval_steps=<steps> (0 or null: evaluate before and after training only)",
    "evaluation_strategy": "trainer.eval_steps=<steps> (0 or null: evaluate before and after training only)",
    "do_eval": "trainer.eval_steps, data.eval_split_size or evals (sft_exp evaluates whenever it has held-out "
    "rows or tasks)",
    "prediction_loss_only": "evals=<task> (the trainer computes only the loss; tasks generate and score)",
    "remove_unused_columns": "nothing: sft_exp's collator needs every prepared column",
    "average_tokens_across_devices": "nothing: the loss is a mean over every rank's supervised tokens",
    "push_to_hub": "callbacks=[default,push_to_hub] callbacks.push_to_hub.repo_id=<org/name>",
    "hub_model_id": "callbacks.push_to_hub.repo_id={value}",
    "hub_strategy": "callbacks.push_to_hub.strategy={value}",
    "hub_private_repo": "callbacks.push_to_hub.private={value}",
    "hub_revision": "callbacks.push_to_hub.revision={value}",
    "hub_token": "nothing: log in with `hf auth login` or set HF_TOKEN in the environment",
    "hub_always_push": "callbacks.push_to_hub (every save is pushed)",
    "fsdp": "distributed=fsdp",
    "fsdp_config": "distributed=fsdp distributed.training_args.fsdp_config.<key>=<value>",
    "deepspeed": "distributed=deepspeed",
}

# Names a TRL or open-r1 recipe uses that are not TrainingArguments fields sft_exp's trainer group has:
# SFTConfig's data and model fields, ModelConfig, ScriptArguments, and names older TRL versions had.
RECIPE_HOMES = {
    "max_length": "data.max_length={value}",
    "max_seq_length": "data.max_length={value}",
    "packing": "data.packing={value}",
    "packing_strategy": "data.packing_strategy={value}",
    "padding_free": "data.padding_free={value}",
    "completion_only_loss": "data.completion_only_loss={value}",
    "assistant_only_loss": "data.assistant_only_loss={value}",
    "dataset_num_proc": "data.num_proc={value}",
    "chat_template_path": "data.chat_template={value}",
    "dataset_text_field": "data.sources.0.columns={{text:{value}}} (the `text` format's column)",
    "eos_token": "model.eos_token={value}",
    "loss_type": "loss={value}",
    "activation_offloading": "memory=offload",
    "model_init_kwargs": "model.load_kwargs.<key>=<value>",
    "trust_remote_code": "model.trust_remote_code={value}",
    "model_name_or_path": "model=hf model.name_or_path={value}",
    "model_revision": "model.revision={value}",
    "dtype": "model.dtype={value}",
    "torch_dtype": "model.dtype={value}",
    "attn_implementation": "model.attn_implementation={value}",
    "use_peft": "peft=lora",
    "lora_r": "peft.r={value}",
    "lora_alpha": "peft.lora_alpha={value}",
    "lora_dropout": "peft.lora_dropout={value}",
    "lora_target_modules": "peft.target_modules={value}",
    "lora_modules_to_save": "peft.modules_to_save={value}",
    "use_rslora": "peft.use_rslora={value}",
    "use_dora": "peft=dora",
    "load_in_4bit": "peft=qlora",
    "dataset_name": "data.sources=[{{path:{value}}}] (quote it for the shell)",
    "dataset_config": "data.sources.0.subset={value}",
    "dataset_train_split": "data.sources.0.split={value}",
    "dataset_test_split": "data.eval_sources=[{{path:<dataset>,split:{value}}}] (quote it for the shell)",
    "warmup_ratio": "trainer.warmup_steps={value} (a fraction below 1 is a ratio of all steps)",
}


def home(name: str, value: Any = "<value>") -> Optional[str]:
    """The sft_exp override for a TrainingArguments / SFTConfig / ModelConfig field a group or another key owns."""
    template = OWNED_BY_GROUPS.get(name) or RECIPE_HOMES.get(name)
    return None if template is None else template.format(value=shown(value))


def shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(shown(v) for v in value) + "]"
    return "null" if value is None else str(value)


def refuse_owned_extra_args(extra_args: dict, trainer_keys, distributed_args: dict) -> None:
    """`trainer.extra_args` passes fields to TrainingArguments that no group sets; a field a group, a `trainer`
    key or the distributed strategy sets is refused, naming that key (it would be dropped or fight it)."""
    refused = []
    for name, value in (extra_args or {}).items():
        instead = None
        if name in trainer_keys:
            instead = f"trainer.{name}={shown(value)}"
        elif name in distributed_args:
            instead = f"distributed.training_args.{name}={shown(value)} (the distributed strategy sets it)"
        elif name in OWNED_BY_GROUPS or name in RECIPE_HOMES:
            instead = home(name, value)
        if instead is not None:
            refused.append(_elsewhere(f"trainer.extra_args.{name}", name, instead))
    if refused:
        raise ConfigError("; ".join(refused))


def moved_key_message(key: str, value: Any = "<value>", transformers_fields=()) -> Optional[str]:
    """`trainer.<name>` (or `+trainer.<name>`) that is a TRL name with another home in sft_exp: where it goes."""
    group, _, name = key.rpartition(".")
    if group != "trainer":
        return None
    where = home(name, value)
    if where is not None:
        return _elsewhere(key, name, where)
    if name in transformers_fields:
        return (
            f"{key}: a TrainingArguments field sft_exp passes through unchanged: "
            f"+trainer.extra_args.{name}={shown(value)}"
        )
    return None


def _elsewhere(key: str, name: str, where: str) -> str:
    if where.startswith("nothing: "):
        return f"{key}: leave it out; {where[len('nothing: ') :]}."
    return f"{key}: sft_exp sets {name} with another key: {where}"


# ----------------------------------------------------------------------------- the values a run trains with
# torch.optim classes and the TrainingArguments `optim` name of the same optimizer.
OPTIM_NAMES = {"AdamW": "adamw_torch", "SGD": "sgd", "Adagrad": "adagrad", "RMSprop": "rmsprop"}
_OPTIMIZER_FIELDS = {"lr": "learning_rate", "weight_decay": "weight_decay", "eps": "adam_epsilon"}


def optimizer_arguments(optimizer_factory) -> dict:
    """TrainingArguments fields of the optimizer a `functools.partial` (the optimizer group) builds: the
    learning rate, weight decay, betas and eps it trains with, its `optim` name, its other arguments in
    `optim_args`. A class with no `optim` name keeps TrainingArguments' (run_info.json names the class)."""
    keywords = dict(getattr(optimizer_factory, "keywords", {}) or {})
    cls = getattr(optimizer_factory, "func", optimizer_factory)
    fields = {_OPTIMIZER_FIELDS[k]: keywords.pop(k) for k in list(keywords) if k in _OPTIMIZER_FIELDS}
    betas = keywords.pop("betas", None)
    if betas is not None:
        fields["adam_beta1"], fields["adam_beta2"] = (float(b) for b in betas)
    name = OPTIM_NAMES.get(getattr(cls, "__name__", ""))
    if name == "adamw_torch" and keywords.pop("fused", None):
        name = "adamw_torch_fused"
    if name is not None:
        fields["optim"] = name
    keywords = {k: v for k, v in keywords.items() if v is not None}
    if keywords:
        fields["optim_args"] = ",".join(f"{k}={shown(v)}" for k, v in sorted(keywords.items()))
    return fields


def report_to(logger_names) -> list:
    """The trackers a run reports to (sft_exp's loggers, each one transformers also knows by that name)."""
    known = ("wandb", "tensorboard", "mlflow")
    return [name for name in logger_names if name in known]


# What run_info.json records of the arguments (besides every trainer.* key, which resolved_config.yaml has).
RECORDED = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "optim",
    "optim_args",
    "gradient_checkpointing",
    "gradient_checkpointing_kwargs",
    "bf16",
    "fp16",
    "use_cpu",
    "seed",
    "data_seed",
    "output_dir",
    "report_to",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "save_strategy",
    "save_steps",
    "save_total_limit",
)


def recorded(args, optimizer_factory) -> dict:
    """The arguments a run trained with, for run_info.json: the fields above and the optimizer's class."""
    values = {name: getattr(args, name, None) for name in RECORDED}
    values = {k: (v.value if hasattr(v, "value") else v) for k, v in values.items()}  # enums as their names
    cls = getattr(optimizer_factory, "func", optimizer_factory)
    values["optimizer"] = f"{cls.__module__}.{cls.__qualname__}"
    return values


# ----------------------------------------------------------------------------- schedulers
ANY = None  # a scheduler that passes lr_scheduler_kwargs to a torch class as they are
# transformers' lr_scheduler_type -> (the lr_scheduler_kwargs it takes, the groups of which it needs one). Read by
# preflight before torch loads; tests/test_compat.py checks it against transformers' scheduler functions.
SCHEDULERS = {
    "linear": ((), ()),
    "cosine": (("num_cycles",), ()),
    "cosine_with_restarts": (("num_cycles",), ()),
    "polynomial": (("lr_end", "power"), ()),
    "constant": ((), ()),
    "constant_with_warmup": ((), ()),
    "inverse_sqrt": (("timescale",), ()),
    "reduce_lr_on_plateau": (ANY, ()),
    "cosine_with_min_lr": (("num_cycles", "min_lr", "min_lr_rate"), (("min_lr", "min_lr_rate"),)),
    "cosine_warmup_with_min_lr": (("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
                                  (("min_lr", "min_lr_rate"),)),
    "warmup_stable_decay": (("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type", "min_lr_ratio",
                             "num_cycles"), (("num_decay_steps",),)),
    "greedy": (ANY, ()),
}  # fmt: skip


def check_scheduler(scheduler: str, kwargs: dict) -> None:
    """trainer.lr_scheduler_type and its trainer.lr_scheduler_kwargs, before anything loads."""

    if scheduler not in SCHEDULERS:
        raise ConfigError(
            f"trainer.lr_scheduler_type={scheduler}: {did_you_mean(scheduler, SCHEDULERS)}transformers' "
            f"schedulers are {', '.join(SCHEDULERS)}."
        )
    accepted, needed = SCHEDULERS[scheduler]
    for name in kwargs or {}:
        if accepted is not ANY and name not in accepted:
            takes = f"it takes {', '.join(accepted)}" if accepted else "it takes none"
            raise ConfigError(
                f"trainer.lr_scheduler_kwargs.{name}: {scheduler} has no such argument; "
                f"{did_you_mean(name, accepted)}{takes}."
            )
    for group in needed:
        if not any(name in (kwargs or {}) for name in group):
            example = (
                f"+trainer.lr_scheduler_kwargs.{group[-1]}=0.1"
                if "rate" in group[-1]
                else f"+trainer.lr_scheduler_kwargs.{group[0]}=<value>"
            )
            raise ConfigError(
                f"trainer.lr_scheduler_type={scheduler} needs trainer.lr_scheduler_kwargs."
                f"{' or .'.join(group)} (e.g. {example})."
            )
