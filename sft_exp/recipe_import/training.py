"""Recipe fields about training -> optimizer, memory, trainer.*, the run folder, evaluation and saving."""

from __future__ import annotations

import functools
from pathlib import Path

from sft_exp.recipe_import.model_data import Unmapped, one
from sft_exp.recipe_import.rows import GROUP, Recipe, Row, Setting

# transformers' optim names sft_exp's optimizer group trains the same way (AdamW fused or not; plain SGD).
ADAMW = {"adamw_torch": False, "adamw_torch_fused": True}


@functools.cache
def trainer_keys() -> frozenset[str]:
    """The TrainingArguments fields the `trainer` group sets by name (the rest go through trainer.extra_args)."""
    import dataclasses

    from sft_exp.config import TrainerConfig

    return frozenset(f.name for f in dataclasses.fields(TrainerConfig)) - {"_target_", "_partial_", "extra_args"}


def training_argument(name: str):
    """A TrainingArguments field sft_exp passes on as it is: trainer.<name>, or trainer.extra_args.<name>."""

    def handler(r: Recipe, value) -> Row:
        return one(f"trainer.{name}" if name in trainer_keys() else f"trainer.extra_args.{name}", value)

    return handler


def learning_rate(r: Recipe, value) -> Row:
    return one("optimizer.lr", value)


def weight_decay(r: Recipe, value) -> Row:
    return one("optimizer.weight_decay", value)


def adam_beta(r: Recipe, value) -> Row:
    if r.get("optim") not in ADAMW:
        return Row("", info=f"not read by optim {r.get('optim')}")
    return one("optimizer.betas", [r.get("adam_beta1"), r.get("adam_beta2")])


def adam_epsilon(r: Recipe, value) -> Row:
    if r.get("optim") not in ADAMW:
        return Row("", info=f"not read by optim {r.get('optim')}")
    return one("optimizer.eps", value)


def optim(r: Recipe, value) -> Row:
    if value in ADAMW:
        return Row("", [Setting(f"{GROUP}optimizer", "adamw"), Setting("optimizer.fused", ADAMW[value])])
    if value == "sgd":  # transformers builds torch.optim.SGD with no momentum
        return Row(
            "",
            [
                Setting(f"{GROUP}optimizer", "sgd"),
                Setting("optimizer.momentum", 0.0),
                Setting("optimizer.nesterov", False),
            ],
        )
    raise Unmapped(f"optim {value!r}: sft_exp's optimizer group has adamw_torch(_fused) (optimizer=adamw) and sgd")


def warmup_steps(r: Recipe, value) -> Row:
    return one("trainer.warmup_steps", value)


def precision(r: Recipe, value) -> Row:
    """bf16 / fp16 -> trainer.precision. TRL's bf16 default (None) means bf16 unless fp16."""
    fp16, bf16 = bool(r.get("fp16")), r.get("bf16")
    chosen = "fp16" if fp16 else "bf16" if bf16 is None or bf16 else "fp32"
    info = "TRL's default: bf16 unless fp16" if bf16 is None and not fp16 else ""
    return one("trainer.precision", chosen, info=info)


def gradient_checkpointing(r: Recipe, value) -> Row:
    if r.get("activation_offloading"):
        return Row("", [Setting(f"{GROUP}memory", "offload"), Setting("memory.with_checkpointing", bool(value))])
    return one(f"{GROUP}memory", "checkpointing" if value else "none")


def activation_offloading(r: Recipe, value) -> Row:
    if not value:
        return Row("", info="off, as sft_exp's memory group without offload")
    checkpointing = bool(r.get("gradient_checkpointing"))
    return Row("", [Setting(f"{GROUP}memory", "offload"), Setting("memory.with_checkpointing", checkpointing)])


def gradient_checkpointing_kwargs(r: Recipe, value) -> Row:
    value = dict(value or {})
    if value and value != {"use_reentrant": False}:
        raise Unmapped(
            f"gradient_checkpointing_kwargs {value}: sft_exp checkpoints non-reentrant, with no other kwargs"
        )
    return Row("", info="sft_exp checkpoints non-reentrant: the same")


def seed(r: Recipe, value) -> Row:
    return one("seed", value)


def data_seed(r: Recipe, value) -> Row:
    if value is not None and value != r.get("seed"):
        raise Unmapped(f"data_seed {value} (seed {r.get('seed')}): sft_exp samples the data with the run's seed")
    return Row("", info="sft_exp samples the data with the run's seed too")


def output_dir(r: Recipe, value) -> Row:
    return one(
        "hydra.run.dir",
        value,
        "the run folder: checkpoints in <dir>/checkpoints, the model in <dir>/model "
        "(TRL: both in output_dir); a relaunch resumes it, never overwrites it",
    )


def overwrite_output_dir(r: Recipe, value) -> Row:
    return Row(
        "",
        note="gone from transformers 5; sft_exp never overwrites a run folder: a relaunch resumes "
        "(open-r1's sft.py resumes as well)",
    )


def not_read(why: str):
    def handler(r: Recipe, value) -> Row:
        return Row("", info=why)

    return handler


def only_default(why: str, *same):
    """A field sft_exp has no setting for: fine at the values in `same` (what sft_exp does), refused otherwise."""

    def handler(r: Recipe, value) -> Row:
        if value not in same:
            raise Unmapped(why)
        return Row("", info="sft_exp does the same")

    return handler


def logging_strategy(r: Recipe, value) -> Row:
    if value == "steps":
        return Row("", info="sft_exp logs every trainer.logging_steps")
    return training_argument("logging_strategy")(r, value)


def save_strategy(r: Recipe, value) -> Row:
    """TRL (transformers' DefaultFlowCallback) also saves a checkpoint at the last step with save_strategy steps;
    sft_exp does that only when trainer.save_final_checkpoint says so."""
    row = training_argument("save_strategy")(r, value)
    row.settings.append(Setting("trainer.save_final_checkpoint", value == "steps"))
    return row


def eval_strategy(r: Recipe, value) -> Row:
    """TRL evaluates only when eval_strategy says so; sft_exp evaluates whenever it has held-out rows or tasks
    (before and after training too), so "no" leaves it none, unless the mixture holds rows out anyway."""
    settings, note = [], ""
    if not r.get("benchmarks"):
        settings.append(Setting(f"{GROUP}evals", "none"))
    if value == "no":
        if not r.mixture:
            settings.append(Setting("data.eval_split_size", 0))
        elif r.mixture.get("test_split_size"):
            note = (
                "open-r1 holds out the mixture's test split without evaluating it; sft_exp evaluates those rows "
                "before and after training"
            )
        return Row("", [*settings, Setting("trainer.eval_steps", None)], note)
    if r.mixture and not r.mixture.get("test_split_size"):
        raise Unmapped(
            f"eval_strategy {value!r} with a dataset_mixture that has no test_split_size: open-r1 would "
            "find no test split; set dataset_mixture.test_split_size"
        )
    note = "sft_exp also evaluates before training and after the last step"
    if value == "steps":
        return Row("", [*settings, Setting("trainer.eval_steps", r.get("eval_steps") or r.get("logging_steps"))], note)
    return Row("", [*settings, Setting("trainer.eval_steps", None), Setting("trainer.eval_strategy", value)], note)


def eval_steps(r: Recipe, value) -> Row:
    if str(r.get("eval_strategy")) != "steps":
        return Row("", info="not read: eval_strategy is not steps")
    return one("trainer.eval_steps", value)


def report_to(r: Recipe, value) -> Row:
    names = [value] if isinstance(value, str) else list(value or [])
    if names in (["none"], []):
        return one(f"{GROUP}logger", "none")
    unknown = [name for name in names if name not in ("wandb", "tensorboard", "mlflow")]
    if unknown:
        raise Unmapped(f"report_to {unknown[0]!r}: sft_exp's loggers are wandb, tensorboard and mlflow (name them)")
    note = "W&B runs offline unless an API key is configured" if "wandb" in names else ""
    return one(f"{GROUP}logger", names if len(names) > 1 else names[0], note)


def wandb_field(key: str):
    """open-r1's wandb_entity / wandb_project / wandb_run_group, and run_name: the W&B logger's fields."""

    def handler(r: Recipe, value) -> Row:
        names = r.get("report_to")
        if "wandb" not in ([names] if isinstance(names, str) else list(names or [])):
            return Row("", info="not read: the recipe does not report to wandb")
        return one(f"logger.wandb.{key}", value)

    return handler


def resume_from_checkpoint(r: Recipe, value) -> Row:
    return one("resume_from_checkpoint", value)


def use_liger_kernel(r: Recipe, value) -> Row:
    row = training_argument("use_liger_kernel")(r, bool(value))
    row.note = "Liger's kernels replace the model's norms, MLP and RoPE; sft_exp's chunked LM head computes the loss"
    return row


def env(r: Recipe, value) -> Row:
    if not isinstance(value, dict):
        raise Unmapped("env: expected a mapping of environment variables")
    return Row(
        "",
        [Setting(f"hydra.job.env_set.{name}", str(v)) for name, v in value.items()],
        info="set by Hydra as the job starts (hydra.job.env_set)",
    )


def repo_name(r: Recipe) -> str:
    """TRL's hub_model_id default: the output folder's name."""
    return r.get("hub_model_id") or Path(str(r.get("output_dir") or "trainer_output")).name
