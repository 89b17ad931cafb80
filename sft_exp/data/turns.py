"""Which turns of a conversation teach, and how much: the run's settings and the rows' own weights.

Per run (`data.*`): `roles_to_train` (default assistant), `train_on_eot` (all | turn | last | none:
whose end-of-turn tokens are trained), `last_turn_only` (only the last trained turn teaches,
LLaMA-Factory's mask_history), `train_reasoning` (an assistant turn's reasoning trained or masked).
Per message (formats.py: message_loss_weights): `weight` and `train`. The result is weighted character spans
(start, end, weight); the loss divides by the summed weights of its tokens.

Templates that drop earlier turns' reasoning (Qwen3 renders the thinking of assistant turns after the
last user message only): rendered whole, such a conversation shows an earlier turn without its reasoning,
so the whole-conversation example masks it, and with `data.split_reasoning_turns=true` (the default) each
such turn also gets an example of its own (the conversation up to that turn, only that turn supervised).
Whether a turn is dropped is found by rendering, never by the template's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import NamedTuple

from sft_exp.data.formats import Conversation, MessageLoss
from sft_exp.data.templates import render_conversation

EOT_POLICIES = ("all", "turn", "last", "none")
TRAINABLE_ROLES = ("system", "user", "assistant", "tool")
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class LossPolicy:
    roles_to_train: tuple = ("assistant",)
    train_on_eot: str = "turn"
    last_turn_only: bool = False
    train_reasoning: bool = True

    @property
    def is_default(self) -> bool:
        return self == DEFAULT_POLICY


DEFAULT_POLICY = LossPolicy()  # today's masks: assistant turns with their end of turn


class Turn(NamedTuple):
    """One message's place in the rendered text: trained part [start, content_end), its end of turn [content_end, end)."""

    index: int
    start: int
    content_end: int
    end: int


def _bad(reason: str, detail: str):
    from sft_exp.errors import BadRow

    return BadRow(reason, detail)


def message_weights(conv, policy: LossPolicy) -> list[float]:
    """Per message its loss weight: its role and the row's `weight` / `train`, then `last_turn_only`."""
    losses = conv.message_losses or [None] * len(conv.messages)
    weights = []
    for message, loss in zip(conv.messages, losses):
        in_role = message["role"] in policy.roles_to_train
        if loss is not None and loss.weight is not None and not in_role and loss.train is not True:
            raise _bad(
                "bad_weight",
                f"{loss.where} ({message['role']}) has a weight, but data.roles_to_train={list(policy.roles_to_train)} "
                "does not train that role; add the role to data.roles_to_train, set `train: true` on the message, "
                "or remove its weight",
            )
        trained = in_role if loss is None or loss.train is None else loss.train
        weights.append((1.0 if loss is None or loss.weight is None else loss.weight) if trained else 0.0)
    if policy.last_turn_only:
        trained = [i for i, w in enumerate(weights) if w > 0]
        weights = [w if trained and i == trained[-1] else 0.0 for i, w in enumerate(weights)]
    return weights


def _reasoning_cuts(text: str, turn: Turn, message: dict) -> list[tuple[int, int]]:
    """Character ranges of the turn's reasoning in the render: its reasoning_content and <think> blocks."""
    region = text[turn.start : turn.content_end]
    cuts = [(turn.start + m.start(), turn.start + m.end()) for m in _THINK.finditer(region)]
    reasoning = (message.get("reasoning_content") or "").strip()
    if reasoning:
        found = region.find(reasoning)
        if found >= 0 and not any(s <= turn.start + found < e for s, e in cuts):
            cuts.append((turn.start + found, turn.start + found + len(reasoning)))
    return sorted(cuts)


def _minus(start: int, end: int, cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces, at = [], start
    for s, e in cuts:
        if s > at:
            pieces.append((at, min(s, end)))
        at = max(at, e)
    if at < end:
        pieces.append((at, end))
    return [(s, e) for s, e in pieces if s < e]


def reasoning_text(message: dict) -> str:
    """An assistant message's reasoning: its reasoning_content, else the inside of a <think> block in its content."""
    if message.get("reasoning_content"):
        return str(message["reasoning_content"]).strip()
    content = message.get("content") or ""
    if "</think>" in content:
        return content.split("</think>")[0].split("<think>")[-1].strip()
    return ""


def has_reasoning(conv) -> bool:
    return any(m["role"] == "assistant" and reasoning_text(m) for m in conv.messages)


def reasoning_dropped(text: str, turn: Turn, message: dict) -> bool:
    """An assistant turn whose reasoning the template did not render here (Qwen3 drops earlier turns')."""
    reasoning = reasoning_text(message) if message["role"] == "assistant" else ""
    return bool(reasoning) and reasoning not in text[turn.start : turn.end]


def weighted_spans(text: str, turns: list[Turn], conv, policy: LossPolicy) -> list[tuple[int, int, float]]:
    """The trained character spans (start, end, weight) of a rendered conversation under `policy`."""
    weights = message_weights(conv, policy)
    with_reasoning = [t for t in turns if conv.messages[t.index].get("reasoning_content")]
    if with_reasoning and all(reasoning_dropped(text, t, conv.messages[t.index]) for t in with_reasoning):
        first = with_reasoning[0]
        where = conv.message_losses[first.index].where if conv.message_losses else f"messages[{first.index}]"
        raise _bad(
            "template_drops_reasoning",
            f"{where} has a reasoning_content, but the chat template renders no message's reasoning; use a template "
            "that renders reasoning_content (e.g. Qwen3's), or put the reasoning in the content as <think>...</think>",
        )
    trained = [t.index for t in turns if weights[t.index] > 0]
    spans = []
    for turn in turns:
        message, weight = conv.messages[turn.index], weights[turn.index]
        if message["role"] == "assistant" and reasoning_dropped(text, turn, message):
            weight = 0.0  # rendered without its reasoning: not what the model sees when it writes this turn
        if weight > 0:
            cuts = (
                [] if policy.train_reasoning or message["role"] != "assistant" else _reasoning_cuts(text, turn, message)
            )
            for s, e in _minus(turn.start, turn.content_end, cuts):
                while cuts and s < e and text[s].isspace():  # the blank lines after a masked </think>
                    s += 1
                if s < e:
                    spans.append((s, e, weight))
        eot = {
            "turn": weight,
            "none": 0.0,
            "last": weight if trained and turn.index == trained[-1] else 0.0,
            "all": weight if weight > 0 else 1.0,
        }[policy.train_on_eot]
        if eot > 0 and turn.end > turn.content_end:
            spans.append((turn.content_end, turn.end, eot))
    return _merged(spans)


def _merged(spans: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Adjacent spans of the same weight as one (a turn and its end of turn: tokens straddling them stay trained)."""
    out = []
    for span in sorted(spans):
        if out and out[-1][1] == span[0] and out[-1][2] == span[2]:
            out[-1] = (out[-1][0], span[1], span[2])
        else:
            out.append(span)
    return out


def _dropped(full: str, upto: str, reasoning: str) -> bool:
    """Whether the whole conversation renders the turn differently, through its reasoning, than the
    conversation up to the turn does (the rendering the model sees when it writes it)."""
    found = upto.find(reasoning)
    if found < 0:
        return False  # the template renders no reasoning even at the turn: today's rules apply (masks.py)
    through = found + len(reasoning)
    return full[:through] != upto[:through]


def dropped_reasoning_turns(
    conv: Conversation, full: str, template: str, variables: dict, policy: LossPolicy, completion_only: bool
) -> list[int]:
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
