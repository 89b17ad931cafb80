"""What trains is what the run folder records, and a setting is taken where sft_exp takes it or refused naming
that key: training_args.bin and the optimizer state agree with the groups, trainer.extra_args cannot set what a
group owns, a TRL name typed under `trainer.` is pointed to its home, and the scheduler's kwargs take effect."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest
import torch

from sft_exp.errors import ConfigError
from tests.helpers import DEMO_EVAL_ROWS, NO_SAMPLE_GENERATIONS, compose, run_sft

TINY = [
    "trainer.logging_steps=1",
    *NO_SAMPLE_GENERATIONS,
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=8",
    "data.sources.0.max_samples=24",
    DEMO_EVAL_ROWS.format(8),
    "data.max_length=64",
    "logger=none",
]


def train(run_dir: Path, *overrides: str) -> float:
    from sft_exp.train import run

    return run(compose([*TINY, f"run_dir={run_dir}", *overrides]))


def saved_arguments(checkpoint: Path):
    return torch.load(checkpoint / "training_args.bin", weights_only=False)


GROUP_SETTINGS = [
    "optimizer.lr=4e-5",
    "optimizer.weight_decay=0.1",
    "optimizer.betas=[0.8,0.95]",
    "optimizer.eps=1e-7",
    "memory=checkpointing",
    "seed=7",
    "trainer.max_steps=2",
    "trainer.save_steps=2",
]


def test_training_args_bin_and_the_optimizer_state_say_what_trained(tmp_path):
    from sft_exp.train import training_arguments

    train(tmp_path, *GROUP_SETTINGS)
    checkpoint = tmp_path / "checkpoints" / "checkpoint-2"
    args = saved_arguments(checkpoint)
    assert (args.learning_rate, args.weight_decay, args.adam_beta1, args.adam_beta2, args.adam_epsilon) == (
        4e-5,
        0.1,
        0.8,
        0.95,
        1e-7,
    )
    assert args.optim == "adamw_torch" and args.gradient_checkpointing and (args.seed, args.data_seed) == (7, 7)
    assert args.output_dir == str(tmp_path / "checkpoints") and args.report_to == []
    # The optimizer that trained, read back from its state: the same learning rate, decay and betas.
    state = torch.load(checkpoint / "optimizer.pt", weights_only=False)
    decayed = state["param_groups"][0]
    assert (decayed["initial_lr"], decayed["weight_decay"], tuple(decayed["betas"]), decayed["eps"]) == (
        4e-5,
        0.1,
        (0.8, 0.95),
        1e-7,
    )
    assert state["param_groups"][1]["weight_decay"] == 0.0  # norms and biases, as transformers groups them
    # The function 31a's parity test uses builds the same arguments without a model or data.
    rebuilt = training_arguments(compose([*TINY, f"run_dir={tmp_path}", *GROUP_SETTINGS]))
    assert rebuilt.to_dict() == args.to_dict()
    trained_with = json.loads((tmp_path / "run_info.json").read_text())["trained_with"]
    assert trained_with["learning_rate"] == 4e-5 and trained_with["optimizer"] == "torch.optim.adamw.AdamW"
    assert trained_with["gradient_checkpointing"] is True


@pytest.mark.parametrize(
    "optimizer, expected",
    [
        (["optimizer.fused=true"], {"optim": "adamw_torch_fused"}),
        (
            ["optimizer=sgd", "optimizer.lr=0.05"],
            {"optim": "sgd", "learning_rate": 0.05, "optim_args": "momentum=0.9,nesterov=false"},
        ),
    ],
)
def test_the_optimizer_group_names_its_optimizer_in_the_arguments(optimizer, expected):
    from sft_exp.train import training_arguments

    args = training_arguments(compose(optimizer))
    assert {key: getattr(args, key) for key in expected} == expected


def test_the_loggers_are_report_to_and_transformers_adds_none_of_its_own(tmp_path):
    from transformers.integrations import TensorBoardCallback

    pytest.importorskip("tensorboard")
    train(tmp_path, "trainer.max_steps=1", "logger=tensorboard", "trainer.save_strategy=no")
    from sft_exp.train import training_arguments

    assert training_arguments(compose(["logger=[tensorboard,wandb]"])).report_to == ["tensorboard", "wandb"]
    assert saved_arguments(tmp_path / "model").report_to == ["tensorboard"]
    assert len(list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))) == 1  # one writer, sft_exp's
    assert TensorBoardCallback  # the integration transformers would have added alongside


@pytest.mark.parametrize(
    "field, value, key",
    [
        ("learning_rate", "4e-5", "optimizer.lr=4e-05"),
        ("weight_decay", "0.1", "optimizer.weight_decay=0.1"),
        ("optim", "sgd", "optimizer=sgd"),
        ("adam_beta2", "0.95", "optimizer.betas=[0.9,0.95]"),
        ("gradient_checkpointing", "true", "memory=checkpointing"),
        ("bf16", "true", "trainer.precision=bf16"),
        ("output_dir", "/tmp/x", "hydra.run.dir=/tmp/x"),
        ("seed", "3", "seed=3"),
        ("report_to", "wandb", "logger=wandb"),
        ("max_steps", "3", "trainer.max_steps=3"),
        ("lr_scheduler_kwargs", "{min_lr:0.1}", "trainer.lr_scheduler_kwargs"),
        ("hub_model_id", "me/model", "callbacks.push_to_hub.repo_id=me/model"),
    ],
)
def test_extra_args_refuse_what_a_group_sets_naming_that_key(field, value, key):
    from sft_exp.preflight import validate_config

    message = rf"trainer.extra_args.{field}: sft_exp sets {field} .*{key}".replace("[", r"\[")
    with pytest.raises(ConfigError, match=message):
        validate_config(compose([f"+trainer.extra_args.{field}={value}"]))


def test_extra_args_refused_on_the_command_line_before_anything_loads():
    done = run_sft(
        "+trainer.extra_args.learning_rate=4e-5", "+trainer.extra_args.optim=sgd", "logger=none", timeout=120
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-2000:]
    assert "trainer.extra_args.learning_rate: sft_exp sets learning_rate with another key: optimizer.lr=4e-05" in output
    assert "; trainer.extra_args.optim: sft_exp sets optim with another key: optimizer=adamw" in output  # each one
    assert "Tokenizing" not in output and "Traceback" not in output


def test_every_trl_training_field_typed_under_trainer_is_answered():
    """Each TrainingArguments and SFTConfig field a TRL user may type as `trainer.<name>` is a trainer key, has
    a home named in sft_exp, or is told to go through +trainer.extra_args."""
    from transformers import TrainingArguments

    from sft_exp.cli_errors import moved_key
    from sft_exp.config import TrainerConfig

    trl = pytest.importorskip("trl")
    ours = {f.name for f in dataclasses.fields(TrainerConfig)}
    trl_fields = {f.name for f in dataclasses.fields(TrainingArguments)} | {
        f.name for f in dataclasses.fields(trl.SFTConfig)
    }
    for field in trl_fields:
        if field not in ours and field not in UNREACHABLE:
            assert moved_key(f"trainer.{field}", [f"trainer.{field}=1"]), field


# SFTConfig fields with no sft_exp form yet (each a choice of TRL's data pipeline); docs/coming-from-trl.md names them.
UNREACHABLE = {
    "dataset_kwargs",
    "truncation_mode",
    "shuffle_dataset",
    "pad_to_multiple_of",
    "eval_packing",
    "pad_token",
}


def test_the_homes_named_are_keys_of_the_composed_config():
    """Every key a message sends a user to exists: a config key, or a group option."""
    import re

    from sft_exp.paths import config_dir
    from sft_exp.training.arguments import OWNED_BY_GROUPS, RECIPE_HOMES, home

    cfg = compose(["callbacks=[default,push_to_hub]", "callbacks.push_to_hub.repo_id=me/model", "peft=lora"])
    for name in {**OWNED_BY_GROUPS, **RECIPE_HOMES}:
        template = home(name)  # with <value> where the user's value goes
        for key, value in re.findall(r"([a-z_][\w.]*)=([\w\[{<]+)", template):
            if key in ("hydra.run.dir", "seed") or key.startswith("hydra."):
                continue
            group = config_dir() / key
            if group.is_dir():
                assert (group / f"{value}.yaml").is_file() or value.startswith(("[", "<")), (name, template)
            elif key == "model.eos_token" and "eos_token" not in cfg.model:
                continue  # issue 31's other half adds it (branch recipe-import)
            else:
                parent, _, leaf = key.rpartition(".")
                assert leaf in _keys_of(cfg, parent), (name, template)


def _keys_of(cfg, key: str):
    from omegaconf import OmegaConf

    node = OmegaConf.select(cfg, key.replace(".0.", "[0]."))
    return node.keys() if node is not None else ()


def test_bf16_on_cpu_and_hydras_env_set_through_the_command_line(tmp_path):
    """trainer.precision=bf16 trains on a CPU (transformers is told use_cpu), and hydra.job.env_set's variables
    are set before the run sizes its threads (3: what no machine's free-CPU count here gives)."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine bf16 is the GPU's")
    done = run_sft(
        *TINY,
        "trainer.max_steps=1",
        "trainer.precision=bf16",
        "+hydra.job.env_set.OMP_NUM_THREADS=3",
        f"hydra.run.dir={tmp_path}",
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    args = saved_arguments(tmp_path / "model")
    assert args.bf16 and args.use_cpu
    assert "cpu threads: 3 (OMP_NUM_THREADS" in output
    assert json.loads((tmp_path / "run_info.json").read_text())["device"].endswith(", 3 threads")


def test_an_env_block_is_refused_naming_hydras_env_set():
    from sft_exp.preflight import validate_config

    with pytest.raises(
        ConfigError,
        match=r"env.OMP_NUM_THREADS: sft_exp has no env block .* "
        r"\+hydra.job.env_set.OMP_NUM_THREADS=1 on the command line",
    ):
        validate_config(compose(["+env.OMP_NUM_THREADS=1"]))


def test_the_scheduler_kwargs_take_effect(tmp_path):
    import math

    train(
        tmp_path,
        "trainer.max_steps=4",
        "optimizer.lr=1e-3",
        "trainer.warmup_steps=0",
        "trainer.save_strategy=no",
        "trainer.lr_scheduler_type=cosine_with_min_lr",
        "+trainer.lr_scheduler_kwargs.min_lr_rate=0.5",
    )
    rates = [
        row["learning_rate"]
        for row in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if "learning_rate" in row
    ]
    # A cosine from 1e-3 down to half of it (without the kwargs it would not start; linear would end near 0).
    assert rates == pytest.approx([0.5e-3 + 0.25e-3 * (1 + math.cos(math.pi * step / 4)) for step in range(4)])
    assert saved_arguments(tmp_path / "model").lr_scheduler_kwargs == {"min_lr_rate": 0.5}


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trainer.lr_scheduler_type=cosine_with_min_lr"], "needs trainer.lr_scheduler_kwargs.min_lr or .min_lr_rate"),
        (["trainer.lr_scheduler_type=cosine", "+trainer.lr_scheduler_kwargs.min_lr=0"], "cosine has no such argument"),
        (["trainer.lr_scheduler_type=cosine_min_lr"], "did you mean `cosine_with_min_lr`"),
        (["trainer.save_strategy=False"], 'write save_strategy: "no"'),
    ],
)
def test_scheduler_and_save_settings_are_checked_before_anything_loads(overrides, message):
    from sft_exp.preflight import validate_config

    with pytest.raises(ConfigError, match=message):
        validate_config(compose(overrides))


def test_the_scheduler_table_is_transformers_own():
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION

    from sft_exp.training.arguments import ANY, SCHEDULERS

    assert set(SCHEDULERS) == {kind.value for kind in TYPE_TO_SCHEDULER_FUNCTION}
    positional = {"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"}
    for kind, function in TYPE_TO_SCHEDULER_FUNCTION.items():
        accepted, needed = SCHEDULERS[kind.value]
        parameters = inspect.signature(function).parameters
        if accepted is ANY:
            assert any(p.kind == p.VAR_KEYWORD for p in parameters.values()), kind
            continue
        assert set(accepted) == set(parameters) - positional, kind
        required = {n for n, p in parameters.items() if p.default is p.empty} - positional
        assert required <= {name for group in needed for name in group}, kind
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):  # a group of which one is needed: transformers refuses neither
        TYPE_TO_SCHEDULER_FUNCTION[next(k for k in TYPE_TO_SCHEDULER_FUNCTION if k.value == "cosine_with_min_lr")](
            optimizer, num_warmup_steps=0, num_training_steps=4
        )


@pytest.mark.parametrize(
    "overrides, package",
    [
        (["model.attn_implementation=flash_attention_2"], "flash_attn"),
        (["+trainer.extra_args.use_liger_kernel=true"], "liger_kernel"),
    ],
)
def test_a_setting_whose_package_is_missing_fails_before_anything_loads(overrides, package):
    from importlib.util import find_spec

    from sft_exp.preflight import validate_config

    if find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(ConfigError, match=f"needs the {package} package, which is not installed"):
        validate_config(compose(overrides))


# ----------------------------------------------------------------------------- what a recipe says about saving
def saved_steps(run_dir: Path) -> list:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))


@pytest.mark.parametrize(
    "saving, steps",
    [
        (["trainer.save_strategy=no", "trainer.save_steps=1"], []),
        (["trainer.save_steps=3"], [3]),  # transformers would add checkpoint-4 (weights + optimizer) at the end
        (["trainer.save_steps=3", "trainer.save_final_checkpoint=true"], [3, 4]),
        (["trainer.save_steps=1", "trainer.save_total_limit=1"], [4]),
    ],
)
def test_checkpoints_are_the_ones_the_settings_ask_for(tmp_path, saving, steps):
    train(tmp_path, "trainer.max_steps=4", *saving)
    assert saved_steps(tmp_path) == steps
    assert (tmp_path / "model" / "model.safetensors").is_file()  # the final weights, always
    assert not list((tmp_path / "model").glob("optimizer.pt"))
