"""The allowed values of trainer.precision and trainer.nonfinite_loss, checked before torch loads
(preflight) and when SFTTrainer is built from Python. Torch-free on purpose."""

from __future__ import annotations

from typing import Optional

from sft_exp.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
NONFINITE_POLICIES = ("stop", "skip")


def check_trainer_choices(precision: Optional[str] = None, nonfinite_loss: Optional[str] = None) -> None:
    for key, value, allowed in (
        ("precision", precision, PRECISIONS),
        ("nonfinite_loss", nonfinite_loss, NONFINITE_POLICIES),
    ):
        if value is not None and value not in allowed:
            raise ConfigError(f"trainer.{key}={value!r} is not one of {', '.join(allowed)}.")
