"""The held-out rows as {"prompt", "reference"} examples, for the `heldout` task evaluation."""
from __future__ import annotations

import numpy as np

from sft_exp.data.formats import (BadRow, Conversation, PromptCompletion, column_map, field_values, normalize_row,
                                  with_system_prompt)

# Every held-out row becomes an example, up to this many (generation is slow; they are picked evenly
# across each group and interleaved across groups, so a task's `limit` still sees every source).
MAX_HELDOUT_EXAMPLES = 1000


def as_example(item) -> dict | None:
    """A normalized row as {prompt, reference}: the prompt messages (or text) and the last answer; None for
    plain text, which has no prompt to answer."""
    if isinstance(item, PromptCompletion):
        return {"prompt": item.prompt, "reference": item.completion}
    if not isinstance(item, Conversation):
        return None  # plain text has no prompt to answer
    messages = item.messages
    if item.n_prompt is not None:
        answer = [m.get("content") or "" for m in messages[item.n_prompt :] if m["role"] == "assistant"]
        return {"prompt": messages[: item.n_prompt], "reference": "\n".join(answer)}
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"prompt": messages[:last], "reference": messages[last].get("content") or ""}


def _example(part, mapping, raw_index: int, system_prompt: str | None) -> dict | None:
    try:
        item = normalize_row(part.fmt, field_values(part.raw[int(raw_index)], mapping))
        example = as_example(with_system_prompt(item, system_prompt))
    except BadRow:  # kept by on_bad_row=drop's tokenization, so not expected; counted as without a prompt
        return None
    return example if example is not None and example["prompt"] else None


def _pick(n_rows: int, quota: int) -> np.ndarray:
    """`quota` row positions spread evenly over `n_rows` (all of them when they fit)."""
    if n_rows <= quota:
        return np.arange(n_rows)
    return np.unique(np.linspace(0, n_rows - 1, quota).round().astype(int))


def _quotas(sizes: list[int], total: int) -> list[int]:
    """Share `total` across groups: small groups whole, the rest split evenly among the larger ones."""
    quotas, left = [0] * len(sizes), total
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        quotas[i] = min(sizes[i], left // (len(order) - k))
        left -= quotas[i]
    return quotas


def heldout_examples(groups: list[tuple], system_prompt: str | None = None) -> tuple[list[dict], dict]:
    """(examples, counts) from `groups`: (encoded part, raw indices of its held-out rows) each; conversations
    get `system_prompt` as training gave it to them (data.system_prompt).

    counts: rows held out, examples made, rows without a prompt (plain text), rows left out by the cap.
    """
    sizes = [len(rows) for _, rows in groups]
    quotas = _quotas(sizes, MAX_HELDOUT_EXAMPLES)
    per_group, without_prompt = [], 0
    for (part, raw_rows), quota in zip(groups, quotas):
        mapping = column_map(part.fmt, part.columns)
        examples = [_example(part, mapping, raw_rows[i], system_prompt) for i in _pick(len(raw_rows), quota)]
        without_prompt += sum(example is None for example in examples)
        per_group.append([example for example in examples if example is not None])
    interleaved = [group[i] for i in range(max(map(len, per_group), default=0)) for group in per_group if i < len(group)]
    counts = {"rows": sum(sizes), "examples": len(interleaved), "without_prompt": without_prompt,
              "left_out_by_cap": sum(sizes) - sum(quotas)}  # fmt: skip
    return interleaved, counts
