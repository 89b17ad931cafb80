"""The structured configs behind conf/, registered in Hydra's ConfigStore.

The primary config (conf/config.yaml) starts its defaults list with `sft_config`, the schema
below, so every group option is merged onto a typed node: a misspelled key, a wrong type or a
missing `???` value fails when Hydra composes the config, before anything loads.

One schema per component: the schema of each of our components (ModelLoader, DataSettings and its
Source, losses, memory strategies, loggers, SFTTrainingArguments' own fields) is generated from the
component's source (sft_exp.schemas), never written here. Each option YAML names its schema in its
defaults list (e.g. `- /schema/loss/dft@_here_`) and sets the `_target_` it is generated from, so
`loss.chunk_size=abc` or `optimizer.betaz=...` fail at compose time too. Written out below are only
third-party targets (torch optimizers, peft.LoraConfig, the TrainingArguments fields we expose) and
the run's own top-level keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sft_exp.paths import asset_path, config_dir
from sft_exp.schemas import GENERATED, component_schema, importable, own_fields

# `${asset:tokenizer}` resolves to a file shipped in sft_exp/assets, wherever the package lives.
if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", lambda rel: str(asset_path(rel)))


def config_groups_help() -> str:
    """`--help`'s list of groups and options: the folders of conf/ (Hydra's own list would also show
    the internal schema/ groups every option merges onto)."""
    lines = []
    for group in sorted(p for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


if not OmegaConf.has_resolver("sft_exp_config_groups"):
    OmegaConf.register_new_resolver("sft_exp_config_groups", config_groups_help)


# ----------------------------------------------------------------------------- our components
# What a generated schema needs beyond the component's fields: the data settings follow the run's seed
# and are built from plain containers.
DATA_TARGET = "sft_exp.data.settings.DataSettings"
SCHEMA_EXTRAS = {DATA_TARGET: dict(defaults={"seed": "${seed}"}, convert="all")}
MODEL_TARGET = "sft_exp.models.loader.ModelLoader"


# ----------------------------------------------------------------------------- third-party targets
@dataclass
class AdamWConfig:
    _target_: str = "torch.optim.AdamW"
    _partial_: bool = True
    lr: float = 2e-5
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    fused: Optional[bool] = None


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = 1e-2
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class LoraAdapterConfig:
    """peft.LoraConfig's fields we expose (peft=lora, dora, qlora); `_convert_: all` gives it plain lists."""

    _target_: str = "peft.LoraConfig"
    _convert_: str = "all"
    task_type: str = "CAUSAL_LM"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    # Module names (or "all-linear": every Linear except the LM head); the model preset's by default.
    target_modules: Any = "${model.lora_target_modules}"
    # Modules trained in full and saved with the adapter (e.g. [embed_tokens] for new tokens).
    modules_to_save: Optional[List[str]] = None
    bias: str = "none"
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class DistributedConfig:
    """How several processes share the work; the launcher (torchrun, accelerate launch) starts them."""

    # ddp: data parallel over however many processes were launched (one is fine); fsdp; deepspeed;
    # ulysses / ring: each row's tokens split across ranks (docs/sequence-parallel.md).
    strategy: str = "ddp"
    # distributed=ulysses: ranks that split one row (DeepSpeed Ulysses); null: every process of a node.
    sp_size: Optional[int] = None
    # distributed=ring: ranks that split one row (torch ring attention, GPUs); null: every process of a node.
    cp_size: Optional[int] = None
    # transformers.TrainingArguments fields the strategy sets (fsdp, fsdp_config, deepspeed, ddp_*).
    training_args: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- trainer
@dataclass
class TrainingArgumentsFields:
    """transformers.TrainingArguments fields the `trainer` group sets directly (a third-party class: the
    ones we support are listed here), and build_training_arguments' `precision` and `extra_args`.

    sft_exp.training.trainer.SFTTrainer is a `_partial_` target: train.run completes it with the model,
    data, loss and callbacks, and sets the output folder, seed, logging and reporting.
    """

    _target_: str = "sft_exp.training.trainer.SFTTrainer"
    _partial_: bool = True
    max_steps: int = -1
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    # The scheduler's own arguments, e.g. {min_lr_rate: 0.1} for cosine_with_min_lr (which needs min_lr or min_lr_rate).
    lr_scheduler_kwargs: Dict[str, Any] = field(default_factory=dict)
    # Linear warmup: a number of steps (>= 1) or a fraction of all steps (< 1).
    warmup_steps: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    # Evaluate (eval loss and every task of `evals`) every eval_steps; 0 or null: only before and after training.
    eval_steps: Optional[int] = None
    # null: every eval_steps when they are set, else only before and after training; or epoch (each epoch's end).
    eval_strategy: Optional[str] = None
    # steps (every save_steps), epoch, best (needs extra_args.metric_for_best_model) or "no" (no checkpoint at all).
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    # auto: bf16 on CUDA, fp32 on CPU. Or fp32 / bf16 / fp16.
    precision: str = "auto"
    dataloader_num_workers: int = 0
    # Any other transformers.TrainingArguments field.
    extra_args: Dict[str, Any] = field(default_factory=dict)


# + SFTTrainingArguments' own fields (nonfinite_loss, router_aux_loss_coef), read from its source.
TrainerConfig = importable(
    dataclasses.make_dataclass(
        "TrainerConfig", own_fields("sft_exp.training.trainer.SFTTrainingArguments"), bases=(TrainingArgumentsFields,)
    )
)


# ----------------------------------------------------------------------------- root
@dataclass
class SFTConfig:
    seed: int = 42
    model: Any = field(default_factory=lambda: component_schema(MODEL_TARGET))
    data: Any = field(default_factory=lambda: component_schema(DATA_TARGET, **SCHEMA_EXTRAS[DATA_TARGET]))
    trainer: Any = field(default_factory=TrainerConfig)
    # Per-option typed (see the schemas above); Any here so each option keeps its own type.
    optimizer: Any = MISSING
    loss: Any = MISSING
    memory: Any = MISSING
    peft: Any = None
    distributed: Any = field(default_factory=DistributedConfig)
    # Dicts of `_target_`s, several at once: logger=[wandb,tensorboard]; callbacks (run recorder, stop on
    # signal, trial pruning, yours: +callbacks.mine._target_=pkg.MyCallback).
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    # What the trainer scores whenever it evaluates: tasks (evals=[heldout,gsm8k]) and, as entries with a
    # top-level `_target_`, evaluators of your own (+evals.mine._target_=pkg.MyEvaluator); evals=none: neither.
    evals: Dict[str, Any] = field(default_factory=dict)
    # true: continue from the latest complete checkpoint of this run folder; or a checkpoint path.
    resume_from_checkpoint: Optional[Any] = None
    # The final metric train.run returns (what an Optuna sweep optimizes), e.g. eval_heldout/exact_match.
    objective: str = "eval_loss"
    # Runs write only here (Hydra's output dir).
    run_dir: str = "${hydra:runtime.output_dir}"


# Third-party targets: their schemas above. Our components' schemas are generated from the `_target_`
# each conf/<group>/<option>.yaml sets.
THIRD_PARTY_SCHEMAS = {
    "optimizer/adamw": AdamWConfig, "optimizer/sgd": SGDConfig, "peft/lora": LoraAdapterConfig,
    "distributed/distributed": DistributedConfig,
}  # fmt: skip


def option_schemas() -> dict:
    """schema/<group>/<name> -> structured config, for every `- /schema/<group>/<name>@<package>` that a
    conf/ YAML merges onto: generated from the `_target_` the YAML sets at <package> (our components),
    or the schema above of a third-party class."""
    schemas = dict(THIRD_PARTY_SCHEMAS)
    for path in sorted(config_dir().glob("*/*.yaml")):
        node = yaml.safe_load(path.read_text())
        for entry in (node.get("defaults") or []) if isinstance(node, dict) else []:
            if not (isinstance(entry, str) and entry.startswith("/schema/")):
                continue
            ref, _, package = entry.partition("@")
            key = ref[len("/schema/") :]
            body = node if package in ("", "_here_") else node.get(package)
            if key not in schemas and isinstance(body, dict) and body.get("_target_"):
                schemas[key] = component_schema(body["_target_"], **SCHEMA_EXTRAS.get(body["_target_"], {}))
    return schemas


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="sft_config", node=SFTConfig)
    for key, node in option_schemas().items():
        group, name = key.rsplit("/", 1)
        cs.store(group=f"schema/{group}", name=name, node=node)


register_configs()


def __getattr__(name: str):
    """The generated schemas, by name: where pickle looks for them (sft_exp.schemas.importable)."""
    if name in GENERATED:
        return GENERATED[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
