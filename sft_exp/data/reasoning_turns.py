"""Per-turn examples for templates that drop earlier turns' reasoning (Qwen3 renders the thinking of
assistant turns after the last user message only).

Rendered whole, such a conversation shows an earlier turn without its reasoning: a rendering the
model never sees when it writes that turn, so the whole-conversation example masks it. With
`data.split_reasoning_turns=true` (the default) each such turn also gets an example of its own: the
conversation up to and including that turn, rendered by the template (so the turn shows its
reasoning, as at inference), with only that turn supervised. Whether a turn is dropped is found by
rendering, never by the template's name: a template that keeps every turn's reasoning splits nothing.
"""
from __future__ import annotations

from dataclasses import replace

from sft_exp.data.formats import Conversation
from sft_exp.data.message_loss import MessageLoss
from sft_exp.data.templates import render_conversation
from sft_exp.data.turn_policy import LossPolicy, message_weights, reasoning_text


def _dropped(full: str, upto: str, reasoning: str) -> bool:
    """Whether the whole conversation renders the turn differently, through its reasoning, than the
    conversation up to the turn does (the rendering the model sees when it writes it)."""
    found = upto.find(reasoning)
    if found < 0:
        return False  # the template renders no reasoning even at the turn: today's rules apply (masks.py)
    through = found + len(reasoning)
    return full[:through] != upto[:through]


def dropped_reasoning_turns(conv: Conversation, full: str, template: str, variables: dict, policy: LossPolicy,
                            completion_only: bool) -> list[int]:
    """Indices of the trained assistant turns with reasoning that `full` (the whole render) does not show as at their turn."""
    weights = message_weights(conv, policy)
    first = conv.n_prompt if completion_only and conv.n_prompt is not None else 0
    last = len(conv.messages) - 1
    turns = []
    for i, message in enumerate(conv.messages):
        if message["role"] != "assistant" or i < first or i == last or weights[i] <= 0:
            continue
        reasoning = reasoning_text(message)
        if not reasoning:
            continue
        upto, _ = render_conversation(template, conv.messages[: i + 1], conv.tools, variables)
        if _dropped(full, upto, reasoning):
            turns.append(i)
    return turns


def turn_example(conv: Conversation, index: int, policy: LossPolicy) -> tuple[Conversation, LossPolicy]:
    """The conversation through message `index`, with only that message supervised (its own weight kept)."""
    losses = conv.message_losses or [None] * len(conv.messages)
    own = losses[index] or MessageLoss(None, None, f"messages[{index}]")
    kept = [
        own if i == index else MessageLoss(None, False, loss.where if loss else f"messages[{i}]")
        for i, loss in enumerate(losses[: index + 1])
    ]
    # Other turns' end of turn is not this example's to train: `all` and `last` come down to the turn's own.
    eot = "none" if policy.train_on_eot == "none" else "turn"
    n_prompt = conv.n_prompt if conv.n_prompt is not None and conv.n_prompt <= index else None
    return Conversation(conv.messages[: index + 1], conv.tools, n_prompt, kept), replace(policy, train_on_eot=eot)
