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


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
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
    # Mapping from the format's field names to this file's column names.
    columns: Dict[str, str] = field(default_factory=dict)
    # Sampling weight in the mixture; above 1 oversamples.
    weight: float = 1.0
    max_samples: Optional[int] = None


@dataclass
class DataConfig:
    sources: List[SourceConfig] = MISSING
    # Held-out sources; when empty, `eval_split_size` of the training rows are held out instead.
    eval_sources: List[SourceConfig] = field(default_factory=list)
    # Fraction (<1) or number (>=1) of training rows held out for evaluation; 0 for none.
    eval_split_size: float = 0.0
    # None: the tokenizer's own; a built-in name (chatml, zephyr); or a path to a .jinja file.
    chat_template: Optional[str] = None
    max_length: int = 1024
    # None: on for prompt-completion data.
    completion_only_loss: Optional[bool] = None
    assistant_only_loss: bool = False
    packing: bool = False
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
class LossConfig:
    _target_: str = "sft_exp.loss.NLLLoss"
    # Positions per chunk of the LM head; bounds the logits held in memory at once.
    chunk_size: int = 1024


@dataclass
class NoMemoryConfig:
    _target_: str = "sft_exp.memory.NoMemoryStrategy"


@dataclass
class CheckpointingConfig:
    _target_: str = "sft_exp.memory.GradientCheckpointing"


@dataclass
class OffloadConfig:
    _target_: str = "sft_exp.memory.ActivationOffloading"
    # Saved tensors smaller than this stay where they are (moving them costs more than it saves).
    min_offload_bytes: int = 1048576
    # On CUDA: copy on a side stream and prefetch the next layer's activations in backward.
    use_streams: bool = True
    # Offloading the checkpointed layer inputs only (torchtune's pairing) saves the most.
    with_checkpointing: bool = True


@dataclass
class WandbLoggerConfig:
    _target_: str = "sft_exp.tracking.WandbLogger"
    project: str = "sft_exp"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    # null: online when an API key is configured, offline otherwise. Or online / offline / disabled.
    mode: Optional[str] = None


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
    """transformers.TrainingArguments fields the user sets, plus sft_exp's own.

    Everything here is passed to sft_exp.trainer.SFTTrainer, which turns it into
    SFTTrainingArguments; the output folder, logging and reporting are set by train.run.
    """

    _target_: str = "sft_exp.trainer.SFTTrainer"
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
    # Evaluate every eval_steps (0 or null: only before and after training).
    eval_steps: Optional[int] = None
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    # auto: bf16 on CUDA, fp32 on CPU. Or fp32 / bf16 / fp16.
    precision: str = "auto"
    dataloader_num_workers: int = 0
    # true: the latest complete checkpoint of this run folder; or a checkpoint path.
    resume_from_checkpoint: Optional[Any] = None
    # stop: a NaN/inf loss stops the run naming the step; skip: the step's update is skipped.
    nonfinite_loss: str = "stop"
    # Router load-balancing loss coefficient for MoE models (null: the model config's own).
    router_aux_loss_coef: Optional[float] = None
    # Sample generations from held-out prompts at the end of training.
    num_sample_generations: int = 4
    max_new_tokens: int = 48
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
    logger: Any = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # Runs write only here (Hydra's output dir).
    run_dir: str = "${hydra:runtime.output_dir}"


SCHEMAS = {
    "optimizer": {"adamw": AdamWConfig, "sgd": SGDConfig},
    "loss": {"nll": LossConfig, "dft": LossConfig},
    "memory": {"none": NoMemoryConfig, "checkpointing": CheckpointingConfig, "offload": OffloadConfig},
    "logger": {"wandb": WandbLoggerConfig},
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

