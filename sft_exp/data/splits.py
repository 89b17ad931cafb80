"""Which rows of each source go to training and evaluation, and how often (seeded, deterministic), and
the held-out rows as {"prompt", "reference"} examples for the `heldout` task evaluation.
"""

from __future__ import annotations

import math

import numpy as np

from sft_exp.data.formats import (
    Conversation,
    PromptCompletion,
    column_map,
    field_values,
    normalize_row,
    with_system_prompt,
)
from sft_exp.errors import BadRow

# A fraction holds out at least one row of a source this large (below it, a fraction rounds down to 0 rows).
MIN_ROWS_FOR_ONE_HELD_OUT = 20


def held_out_count(size: int, fraction: float) -> int:
    """floor(size * fraction), but at least 1 once a source has MIN_ROWS_FOR_ONE_HELD_OUT rows."""
    count = int(np.floor(size * fraction + 1e-9))  # 1e-9: 0.29 * 100 is 28.999999999999996 in floats
    return max(count, 1) if size >= MIN_ROWS_FOR_ONE_HELD_OUT else count


def split_counts(sizes: list[int], eval_split_size: float) -> list[int]:
    """Held-out rows per source: a fraction (<1) of each, or a number (>=1) shared in proportion to size."""
    if eval_split_size <= 0:
        return [0] * len(sizes)
    if eval_split_size < 1:
        return [held_out_count(size, eval_split_size) for size in sizes]
    total = min(int(eval_split_size), sum(sizes))
    exact = np.array(sizes, dtype=float) * total / max(sum(sizes), 1)
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1  # largest remainders first, so the counts add up to `total`
    return counts.tolist()


def split_rows(n_rows: int, n_eval: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, eval rows) of one source, eval rows drawn at random."""
    order = rng.permutation(n_rows)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def split_by_source_row(kept: np.ndarray, n_eval: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """split_rows over source rows: the examples one row expanded into (per-turn reasoning examples) land on
    one side together, so a held-out conversation never has a prefix in training. One example per row: the
    same draw as split_rows."""
    ids, group = np.unique(kept, return_inverse=True)
    if len(ids) == len(kept):
        return split_rows(len(kept), n_eval, rng)
    _, eval_groups = split_rows(len(ids), n_eval, rng)
    held = np.isin(group, eval_groups)
    return np.flatnonzero(~held), np.flatnonzero(held)


def weighted_rows(rows: np.ndarray, weight: float, rng: np.random.Generator) -> np.ndarray:
    """`rows` repeated int(weight) times, plus a random sample of the fractional part (no repeats in it)."""
    whole, fraction = int(weight), weight - int(weight)
    extra = int(round(fraction * len(rows)))
    sampled = rng.choice(rows, size=extra, replace=False) if extra else np.empty(0, dtype=rows.dtype)
    return np.concatenate([rows] * whole + [np.sort(sampled)])


def _permutation(n: int, seed: int) -> np.ndarray:
    """datasets' `shuffle(seed=...)` and `train_test_split(seed=...)` order: a fresh generator each time."""
    return np.random.default_rng(seed).permutation(n)


def mixture_split(
    row_counts: list[int], weights: list[float], eval_split_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """open-r1's dataset_mixture (open_r1.utils.data.get_dataset), on row positions: each source's rows
    shuffled and the first int(rows x weight) taken, the pieces concatenated and shuffled, then
    `eval_split_size` of the mixed rows held out as datasets' train_test_split does (a fraction: ceil(size x
    rows); a number >= 1: that many). Every shuffle is datasets' own with `seed`, so the same rows come out.

    Returns (source of each mixed row, its row position in that source, whether it is held out), in the
    order of the mixed training rows followed by the held-out rows.
    """
    pieces = [
        (np.full(int(n * w), k), _permutation(n, seed)[: int(n * w)])
        for k, (n, w) in enumerate(zip(row_counts, weights))
    ]
    source = np.concatenate([p[0] for p in pieces]).astype(int) if pieces else np.empty(0, dtype=int)
    row = np.concatenate([p[1] for p in pieces]).astype(int) if pieces else np.empty(0, dtype=int)
    mixed = _permutation(len(source), seed)
    source, row = source[mixed], row[mixed]
    n_eval = 0
    if eval_split_size > 0:
        n_eval = math.ceil(eval_split_size * len(source)) if eval_split_size < 1 else int(eval_split_size)
    split = _permutation(len(source), seed)
    order = np.concatenate([split[n_eval:], split[:n_eval]])
    return source[order], row[order], np.arange(len(order)) >= len(order) - n_eval


def rows_to_examples(kept: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Example positions of source rows `rows` (positions into np.unique(kept)), in that order: the examples
    a row was expanded into (per-turn reasoning examples) stay together. One example per row: `rows` itself."""
    ids, group = np.unique(kept, return_inverse=True)
    if len(ids) == len(kept):
        return rows.astype(int)
    by_row = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=len(ids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_pair = counts[rows]
    offsets = np.arange(per_pair.sum()) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
    return by_row[np.repeat(starts[rows], per_pair) + offsets]


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
    interleaved = [
        group[i] for i in range(max(map(len, per_group), default=0)) for group in per_group if i < len(group)
    ]
    counts = {"rows": sum(sizes), "examples": len(interleaved), "without_prompt": without_prompt,
              "left_out_by_cap": sum(sizes) - sum(quotas)}  # fmt: skip
    return interleaved, counts
