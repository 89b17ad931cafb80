"""Which rows of each source go to training and evaluation, and how often: seeded, deterministic."""
from __future__ import annotations

import numpy as np


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
