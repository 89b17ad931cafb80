"""What TRL and open-r1 read from a recipe: the field names of the installed TRL's and transformers'
dataclasses (parsed from their source, not imported: the import prints its table in about a second, torch
never loads), TRL's defaults for the fields sft_exp sets differently, and the names old recipes still use."""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

# (package, file in it, class) of every dataclass `trl sft` parses a recipe into, and transformers'
# TrainingArguments that SFTConfig extends.
TRAINING_ARGUMENTS = ("transformers", "training_args.py", "TrainingArguments")
TRL_CLASSES = {
    "ScriptArguments": ("trl", "scripts/utils.py", "ScriptArguments"),
    "DatasetMixtureConfig": ("trl", "scripts/utils.py", "DatasetMixtureConfig"),
    "ModelConfig": ("trl", "trainer/model_config.py", "ModelConfig"),
    "SFTConfig (TRL's base)": ("trl", "trainer/base_config.py", "_BaseConfig"),
    "SFTConfig": ("trl", "trainer/sft_config.py", "SFTConfig"),
}

# open-r1's additions to TRL's classes (open_r1/configs.py, snapshot 1416fa0c): ScriptArguments.dataset_mixture
# and SFTConfig's benchmarks, callbacks, chat_template, system_prompt, hub_model_revision, ... .
OPEN_R1_FIELDS = (
    "dataset_mixture",
    "benchmarks",
    "callbacks",
    "chat_template",
    "system_prompt",
    "hub_model_revision",
    "overwrite_hub_revision",
    "push_to_hub_revision",
    "wandb_entity",
    "wandb_project",
    "wandb_run_group",
)

# Names older TRL / transformers read and today's refuse ("Unknown arguments from config file"): the field
# they became. open-r1's recipes still use them (open-r1 is pinned to TRL 0.18).
STALE = {
    "torch_dtype": "dtype",  # ModelConfig, TRL < 0.20
    "max_seq_length": "max_length",  # SFTConfig, TRL < 0.20
    "evaluation_strategy": "eval_strategy",  # transformers < 4.46
    "use_liger": "use_liger_kernel",  # SFTConfig, TRL < 0.14
    "preprocessing_num_workers": "dataset_num_proc",  # alignment-handbook's DataArguments
    "dataset_configs": "dataset_config",  # alignment-handbook's DataArguments (a list)
    "warmup_ratio": "warmup_steps",  # transformers < 5: warmup_steps takes the ratio now (a value < 1)
    "overwrite_output_dir": None,  # transformers < 5; read only by scripts: open-r1's sft.py resumes regardless
}

# TRL 1.16's defaults (ScriptArguments, SFTConfig, ModelConfig, TrainingArguments) of every field sft_exp sets
# from its own groups: written into an imported experiment wherever the recipe leaves them, so it trains what
# `trl sft` would. tests/recipes/test_known.py checks each against the installed TRL.
TRL_DEFAULTS = {
    "model_revision": "main", "dtype": "float32", "attn_implementation": None,
    "dataset_train_split": "train", "dataset_test_split": "test",
    "max_length": 1024, "packing": False, "packing_strategy": "bfd", "padding_free": False,
    "assistant_only_loss": False, "completion_only_loss": None, "loss_type": "nll", "activation_offloading": False,
    "learning_rate": 2e-5, "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8,
    "optim": "adamw_torch_fused", "lr_scheduler_type": "linear", "warmup_steps": 0, "max_grad_norm": 1.0,
    "num_train_epochs": 3.0, "max_steps": -1, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1, "gradient_checkpointing": True, "bf16": None, "fp16": False,
    "logging_steps": 10, "eval_strategy": "no", "save_strategy": "steps", "save_steps": 500,
    "save_total_limit": None, "seed": 42, "report_to": "none", "dataloader_num_workers": 0,
}  # fmt: skip


def package_file(package: str, relative: str) -> Path | None:
    """A file inside an installed package, found without importing the package (None when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() else None


@functools.cache
def class_fields(package: str, relative: str, name: str) -> frozenset[str]:
    """The annotated fields of dataclass `name` in a package's source file (empty when it cannot be found)."""
    path = package_file(package, relative)
    if path is None:
        return frozenset()
    tree = ast.parse(path.read_text())
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if node is None:
        return frozenset()
    return frozenset(
        item.target.id for item in node.body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
    )


def training_argument_fields() -> frozenset[str]:
    return class_fields(*TRAINING_ARGUMENTS)


def trl_fields() -> dict[str, str]:
    """Every field `trl sft` reads from a recipe -> the class it belongs to."""
    owners = {name: "TrainingArguments" for name in training_argument_fields()}
    for owner, where in TRL_CLASSES.items():
        owners.update({name: owner.split(" ")[0] for name in class_fields(*where)})
    return owners
