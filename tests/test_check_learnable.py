"""`python -m sft_exp.assets.check_learnable` proves the demo learnable with the default run's own settings."""

from __future__ import annotations

import torch
from transformers import TrainingArguments, get_scheduler

from sft_exp.assets.check_learnable import make_scheduler, parse_args
from tests.helpers import compose


def _lrs(scheduler, steps: int) -> list:
    values = []
    for _ in range(steps):
        values.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return values


def test_defaults_are_the_default_runs_settings():
    cfg, args = compose([]), parse_args([])
    assert (args.steps, args.batch, args.lr) == (
        cfg.trainer.max_steps,
        cfg.trainer.per_device_train_batch_size,
        cfg.optimizer.lr,
    )
    assert (args.schedule, args.warmup_ratio) == (cfg.trainer.lr_scheduler_type, cfg.trainer.warmup_steps)
    model = cfg.model.init_config
    assert (args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads) == (
        model.hidden_size,
        model.intermediate_size,
        model.num_hidden_layers,
        model.num_attention_heads,
        model.num_key_value_heads,
    )


def test_its_learning_rate_schedule_is_the_trainers(tmp_path):
    cfg = compose([])
    steps = 40  # short, so warmup (2 steps) and decay both show
    args = parse_args(["--steps", str(steps)])

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)

    training_args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        warmup_steps=cfg.trainer.warmup_steps,
        lr_scheduler_type=cfg.trainer.lr_scheduler_type,
        report_to=[],
    )
    trainers = get_scheduler(
        training_args.lr_scheduler_type,
        optimizer(),
        num_warmup_steps=training_args.get_warmup_steps(steps),
        num_training_steps=steps,
    )
    expected, got = _lrs(trainers, steps), _lrs(make_scheduler(optimizer(), args), steps)
    assert got == expected
    assert expected[0] == 0.0 and expected[-1] < expected[steps // 2] < max(expected)  # warmup, then decay
