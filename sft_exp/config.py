"""Structured-config dataclasses behind conf/, registered in Hydra's ConfigStore.

The primary config (conf/config.yaml) starts its defaults list with `sft_config`, the schema
below, so every group option is merged onto a typed node: a misspelled key, a wrong type or a
missing `???` value fails when Hydra composes the config, before anything loads.

Groups whose options build different objects (optimizer, loss, memory, peft, logger) are typed
per option: each YAML names its own schema in its defaults list (e.g. `- /schema/loss/nll@_here_`),
so `loss.chunk_size=abc` or `optimizer.betaz=...` fail at compose time too.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sft_exp.paths import asset_path

# `${asset:tokenizer}` resolves to a file shipped in sft_exp/assets, wherever the package lives.
if not OmegaConf.has_resolver("asset"):
    OmegaConf.register_new_resolver("asset", lambda rel: str(asset_path(rel)))


def config_groups_help() -> str:
    """`--help`'s list of groups and options: the folders of conf/ (Hydra's own list would also show
    the internal schema/ groups every option merges onto)."""
    from sft_exp.paths import config_dir

    lines = []
    for group in sorted(p for p in config_dir().iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"{group.name}: {', '.join(options)}")
    return "\n".join(lines)


if not OmegaConf.has_resolver("sft_exp_config_groups"):
    OmegaConf.register_new_resolver("sft_exp_config_groups", config_groups_help)


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    """Built into sft_exp.models.loader.ModelLoader (same fields) by `hydra.utils.instantiate`."""

    _target_: str = "sft_exp.models.loader.ModelLoader"
    # Hub id or local folder. None builds a fresh model from `init_config` (the offline tiny default).
    name_or_path: Optional[str] = None
    # Tokenizer hub id or folder; None means the model's own.
    tokenizer: Optional[str] = None
    # transformers config fields for `AutoModelForCausalLM.from_config` (needs `model_type`).
    init_config: Optional[Dict[str, Any]] = None
    # auto: bfloat16 on CUDA, float32 on CPU. Or float32 / bfloat16 / float16.
    dtype: str = "auto"
    attn_implementation: Optional[str] = "sdpa"
    revision: Optional[str] = None
    trust_remote_code: bool = False
    # Extra keyword arguments for from_pretrained (e.g. quantization_config via peft=qlora).
    load_kwargs: Dict[str, Any] = field(default_factory=dict)
    # A .gguf file in name_or_path (or a path to one): loaded de-quantized as a trainable float model,
    # with the tokenizer stored in the same file (unless model.tokenizer is set).
    gguf_file: Optional[str] = None
    # true: a tokenizer with more tokens than the model's embedding rows (you added tokens) resizes the
    # embeddings; false: that mismatch is an error before training.
    resize_embeddings: bool = False
    # Modules a LoRA adapter wraps (peft.target_modules defaults to this): a name list or "all-linear".
    lora_target_modules: Any = "all-linear"


# ----------------------------------------------------------------------------- data
@dataclass
class SourceConfig:
    # Local .jsonl/.json/.parquet/.csv file or folder, or a hub dataset id.
    path: str = MISSING
    # Display name of the source (per-source loss is logged as loss/<name>); default: the file stem.
    name: Optional[str] = None
    # Hub dataset configuration name (load_dataset's `name`).
    subset: Optional[str] = None
    split: str = "train"
    # auto | text | prompt_completion | messages | sharegpt | alpaca
    format: str = "auto"
    # Mapping from the format's field names to this file's column names. Conversation formats also
    # take the names inside turns (LLaMA-Factory's tags): role_tag, content_tag, user_tag,
    # assistant_tag, system_tag, function_tag (tool-call turns), observation_tag (tool results).
    columns: Dict[str, str] = field(default_factory=dict)
    # Sampling weight in the mixture; above 1 oversamples.
    weight: float = 1.0
    max_samples: Optional[int] = None
    # This source's own held-out file (read like `path`); without one, `data.eval_split_size` of its rows.
    eval_path: Optional[str] = None
    eval_max_samples: Optional[int] = None


@dataclass
class DataConfig:
    """Built into sft_exp.data.DataSettings (same fields) by `hydra.utils.instantiate`."""

    _target_: str = "sft_exp.data.DataSettings"
    _convert_: str = "all"  # plain dicts and lists, not DictConfig
    sources: List[SourceConfig] = MISSING
    # Explicit held-out sources; when given, no training rows are held out.
    eval_sources: List[SourceConfig] = field(default_factory=list)
    # Fraction (<1) or number (>=1) of the rows of each source without an `eval_path` held out; 0 for none.
    eval_split_size: float = 0.05
    # None: the tokenizer's own; a built-in name (chatml, zephyr); or a path to a .jinja file.
    chat_template: Optional[str] = None
    max_length: int = 1024
    # None: on for prompt-completion data.
    completion_only_loss: Optional[bool] = None
    assistant_only_loss: bool = False
    packing: bool = False
    # Padding-free batches without packing: a batch's rows back to back, position_ids restarting per row,
    # no pad tokens. None: on where attention runs per example (sdpa, loaded as sdpa_varlen; flash_attention_2/3).
    padding_free: Optional[bool] = None
    # bfd (best-fit decreasing over the whole dataset) or wrapped.
    packing_strategy: str = "bfd"
    # error: stop at the first bad row with its file and index; drop: drop and count bad rows.
    on_bad_row: str = "error"
    num_proc: Optional[int] = None
    seed: int = "${seed}"  # type: ignore[assignment]


# ----------------------------------------------------------------------------- per-option schemas
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
class NLLLossConfig:
    _target_: str = "sft_exp.training.losses.NLLLoss"
    # Positions per chunk of the LM head; bounds the logits held in memory at once.
    chunk_size: int = 1024


@dataclass
class DFTLossConfig(NLLLossConfig):
    _target_: str = "sft_exp.training.losses.DFTLoss"


@dataclass
class NoMemoryConfig:
    _target_: str = "sft_exp.training.memory.NoMemoryStrategy"


@dataclass
class CheckpointingConfig:
    _target_: str = "sft_exp.training.memory.GradientCheckpointing"


@dataclass
class OffloadConfig:
    _target_: str = "sft_exp.training.memory.ActivationOffloading"
    # Saved tensors smaller than this stay where they are (moving them costs more than it saves).
    min_offload_bytes: int = 1048576
    # On CUDA: copy on a side stream and prefetch the next layer's activations in backward.
    use_streams: bool = True
    # Offloading the checkpointed layer inputs only (torchtune's pairing) saves the most.
    with_checkpointing: bool = True


@dataclass
class WandbLoggerConfig:
    _target_: str = "sft_exp.loggers.WandbLogger"
    project: str = "sft_exp"
    entity: Optional[str] = None
    # null: the sweep folder in a multirun, none otherwise.
    group: Optional[str] = None
    # null: the job's overrides in a multirun (W&B's random name otherwise).
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # null: online when an API key is configured, offline otherwise. Or online / offline / disabled.
    mode: Optional[str] = None


@dataclass
class TensorBoardLoggerConfig:
    _target_: str = "sft_exp.loggers.TensorBoardLogger"
    # null: <run folder>/tensorboard.
    log_dir: Optional[str] = None


@dataclass
class MLflowLoggerConfig:
    _target_: str = "sft_exp.loggers.MLflowLogger"
    # null: a local store in <run folder>/mlflow (sqlite); or any MLflow tracking URI (http://..., databricks).
    tracking_uri: Optional[str] = None
    experiment_name: str = "sft_exp"
    # null: the job's overrides in a multirun, MLflow's own name otherwise.
    run_name: Optional[str] = None
    tags: Dict[str, str] = field(default_factory=dict)


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

    # ddp: data parallel over however many processes were launched (one is fine); fsdp; deepspeed.
    strategy: str = "ddp"
    # transformers.TrainingArguments fields the strategy sets (fsdp, fsdp_config, deepspeed, ddp_*).
    training_args: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- trainer
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")


@dataclass
class TrainerConfig:
    """sft_exp.training.trainer.SFTTrainer's arguments: transformers.TrainingArguments fields plus sft_exp's own.

    A `_partial_` target: train.run completes it with the model, data, loss and callbacks. The
    output folder, seed, logging and reporting are set by train.run.
    """

    _target_: str = "sft_exp.training.trainer.SFTTrainer"
    _partial_: bool = True
    max_steps: int = -1
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "linear"
    # Linear warmup: a number of steps (>= 1) or a fraction of all steps (< 1).
    warmup_steps: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    # Evaluate (eval loss and every task of `evals`) every eval_steps; 0 or null: only before and after training.
    eval_steps: Optional[int] = None
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    # auto: bf16 on CUDA, fp32 on CPU. Or fp32 / bf16 / fp16.
    precision: str = "auto"
    dataloader_num_workers: int = 0
    # stop: a NaN/inf loss stops the run naming the step; skip: the step's update is skipped.
    nonfinite_loss: str = "stop"
    # Router load-balancing loss coefficient for MoE models (null: the model config's own).
    router_aux_loss_coef: Optional[float] = None
    # Any other transformers.TrainingArguments field.
    extra_args: Dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- root
@dataclass
class SFTConfig:
    seed: int = 42
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    # Per-option typed (see the schemas above); Any here so each option keeps its own type.
    optimizer: Any = MISSING
    loss: Any = MISSING
    memory: Any = MISSING
    peft: Any = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # Dicts of `_target_`s, several at once: logger=[wandb,tensorboard]; callbacks (run recorder, stop on
    # signal, task evaluation, yours: +callbacks.mine._target_=pkg.MyCallback); evals=[heldout,gsm8k].
    logger: Dict[str, Any] = field(default_factory=dict)
    callbacks: Dict[str, Any] = field(default_factory=dict)
    evals: Dict[str, Any] = field(default_factory=dict)
    # true: continue from the latest complete checkpoint of this run folder; or a checkpoint path.
    resume_from_checkpoint: Optional[Any] = None
    # The final metric train.run returns (what an Optuna sweep optimizes), e.g. eval_heldout/exact_match.
    objective: str = "eval_loss"
    # Runs write only here (Hydra's output dir).
    run_dir: str = "${hydra:runtime.output_dir}"


SCHEMAS = {
    "optimizer": {"adamw": AdamWConfig, "sgd": SGDConfig},
    "loss": {"nll": NLLLossConfig, "dft": DFTLossConfig},
    "memory": {"none": NoMemoryConfig, "checkpointing": CheckpointingConfig, "offload": OffloadConfig},
    "logger": {"wandb": WandbLoggerConfig, "tensorboard": TensorBoardLoggerConfig, "mlflow": MLflowLoggerConfig},
    "peft": {"lora": LoraAdapterConfig},
    "distributed": {"distributed": DistributedConfig},
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="sft_config", node=SFTConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/data", name="data", node=DataConfig)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


register_configs()



def check_trainer_choices(precision: Optional[str] = None, nonfinite_loss: Optional[str] = None) -> None:
    """The one check of trainer.precision and trainer.nonfinite_loss: before torch loads (preflight) and
    when SFTTrainer is built from Python."""
    from sft_exp.errors import ConfigError

    for key, value, allowed in (("precision", precision, PRECISIONS), ("nonfinite_loss", nonfinite_loss, NONFINITE_POLICIES)):
        if value is not None and value not in allowed:
            raise ConfigError(f"trainer.{key}={value!r} is not one of {', '.join(allowed)}.")
