"""Per-message loss control read from the rows: a `weight` (float >= 0) and a `train` flag per message.

`weight`: 0 = not trained, 1 = as usual, 2 = its tokens count twice (the loss divides by the summed
weights, so it stays a mean per weighted token). `train: false` is weight 0; `train: true` trains the
message even when its role is not in `data.roles_to_train`. A source names other keys for them in
`columns` (`weight_tag: loss_scale`, `train_tag: loss`). The keys are taken off the messages here, so
chat templates never see them; masks.py applies them with the run's settings.
"""
from __future__ import annotations

import math
from typing import NamedTuple

# `columns` keys naming the message keys that hold a message's weight and train flag.
MESSAGE_LOSS_TAGS = ("weight_tag", "train_tag")


class MessageLoss(NamedTuple):
    weight: float | None  # None: the row sets none
    train: bool | None
    where: str  # e.g. messages[3], for errors


def _keys(tags: tuple | None) -> tuple[str, str]:
    tags = dict(tags or ())
    return str(tags.get("weight_tag", "weight")), str(tags.get("train_tag", "train"))


def loss_keys(turn: dict, tags: tuple | None) -> dict:
    """The weight / train entries of a turn (ShareGPT turns are rebuilt key by key: keep these)."""
    if not isinstance(turn, dict):
        return {}
    return {key: turn[key] for key in _keys(tags) if turn.get(key) is not None}


def _bad(where: str, detail: str):
    from sft_exp.data.bad_row import BadRow

    return BadRow("bad_weight", f"{where}: {detail}")


def _weight(value, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _bad(where, f"'{key}' is {value!r}; a message's weight must be a number >= 0 "
                          "(0: not trained, 1: as usual, 2: counts twice)")
    return float(value)


def _train(value, where: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(where, f"'{key}' is {value!r}; a message's train flag must be true or false")
    return value


def message_loss_weights(messages: list[dict], tags: tuple | None, wheres: list[str] | None) -> list | None:
    """Per message its MessageLoss, taking the keys off the messages; None when no message sets one."""
    weight_key, train_key = _keys(tags)
    if not any(weight_key in message or train_key in message for message in messages):
        return None
    wheres = wheres or [f"messages[{i}]" for i in range(len(messages))]
    losses = []
    for message, where in zip(messages, wheres):
        weight, train = message.pop(weight_key, None), message.pop(train_key, None)
        losses.append(MessageLoss(
            None if weight is None else _weight(weight, where, weight_key),
            None if train is None else _train(train, where, train_key),
            where,
        ))  # fmt: skip
    return losses
