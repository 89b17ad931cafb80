"""The cheap checks of the per-turn loss settings (`data.roles_to_train`, `train_on_eot`, `last_turn_only`,
`train_reasoning`), and the `LossPolicy` the encoder applies."""
from __future__ import annotations

from sft_exp.data.turn_policy import EOT_POLICIES, TRAINABLE_ROLES, LossPolicy
from sft_exp.errors import ConfigError


def check_turn_settings(settings) -> None:
    roles = settings.roles_to_train
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, (list, tuple)) or not roles or any(role not in TRAINABLE_ROLES for role in roles):
        raise ConfigError(
            f"data.roles_to_train={roles!r}: must be a non-empty list of {', '.join(TRAINABLE_ROLES)} "
            "(e.g. data.roles_to_train=[assistant])"
        )
    settings.roles_to_train = list(roles)
    if settings.train_on_eot not in EOT_POLICIES:
        raise ConfigError(f"data.train_on_eot={settings.train_on_eot!r}: use one of {', '.join(EOT_POLICIES)}")
    for key in ("last_turn_only", "train_reasoning", "split_reasoning_turns"):
        if not isinstance(getattr(settings, key), bool):
            raise ConfigError(f"data.{key}={getattr(settings, key)!r}: must be true or false")
    if not settings.assistant_only_loss and not loss_policy(settings).is_default:
        raise ConfigError(
            "data.roles_to_train / train_on_eot / last_turn_only / train_reasoning choose which turns teach, "
            "which needs data.assistant_only_loss=true"
        )


def loss_policy(settings) -> LossPolicy:
    return LossPolicy(
        roles_to_train=tuple(settings.roles_to_train), train_on_eot=settings.train_on_eot,
        last_turn_only=settings.last_turn_only, train_reasoning=settings.train_reasoning,
    )  # fmt: skip
