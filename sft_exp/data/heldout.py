"""A few held-out prompts with their reference answers, for sample generations after training."""
from __future__ import annotations

from sft_exp.data.formats import BadRow, Conversation, PromptCompletion, column_map, field_values, normalize_row

MAX_SAMPLE_PROMPTS = 8


def _as_sample(item) -> dict | None:
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


def _samples_from(part, raw_rows) -> list[dict]:
    mapping = column_map(part.fmt, part.columns)
    samples = []
    for raw_index in raw_rows:
        try:
            sample = _as_sample(normalize_row(part.fmt, field_values(part.raw[int(raw_index)], mapping)))
        except BadRow:
            continue
        if sample is not None and sample["prompt"]:
            samples.append(sample)
        if len(samples) >= MAX_SAMPLE_PROMPTS:
            break
    return samples


def sample_prompts(parts, eval_parts, eval_rows) -> list[dict]:
    """Up to MAX_SAMPLE_PROMPTS held-out examples: eval sources first, then rows held out of training."""
    samples = []
    sources = [(part, part.kept[:MAX_SAMPLE_PROMPTS * 2]) for part in eval_parts]
    sources += [(part, part.kept[rows[: MAX_SAMPLE_PROMPTS * 2]]) for part, rows in zip(parts, eval_rows)]
    for part, raw_rows in sources:
        samples += _samples_from(part, raw_rows)
    return samples[:MAX_SAMPLE_PROMPTS]
