"""The numbers a user checks before training: rows read and dropped, tokens, supervision, packing."""
from __future__ import annotations

from collections import Counter

import datasets
import numpy as np
import pyarrow.compute as pc

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data.scan import record_batches

COUNTED = ("source_ids", "labels", "position_ids")


def token_counts(rows, n_sources: int) -> dict:
    """Tokens and trained targets of rows given as token columns (labels != -100, the first token of an
    example excluded: it is never predicted). `rows`: a Dataset (read a record batch at a time) or a Table."""
    batches = record_batches(rows, list(COUNTED)) if isinstance(rows, datasets.Dataset) else rows.to_batches()
    n_tokens, per_source, trained_per_source = 0, np.zeros(n_sources, np.int64), np.zeros(n_sources, np.int64)
    for batch in batches:
        sources, labels, positions = (pc.list_flatten(batch.column(name)).to_numpy() for name in COUNTED)
        trained = (labels != IGNORE_INDEX) & (positions != 0)
        n_tokens += len(labels)
        per_source += np.bincount(sources, minlength=n_sources)
        trained_per_source += np.bincount(sources[trained], minlength=n_sources)
    return _counts(n_tokens, int(trained_per_source.sum()), per_source, trained_per_source)


def row_counts(pieces: list[tuple[int, np.ndarray, np.ndarray]], n_sources: int) -> dict:
    """The same counts from per-row figures: (source index, tokens per row, trained tokens per row) per piece."""
    tokens, trained = np.zeros(n_sources, dtype=np.int64), np.zeros(n_sources, dtype=np.int64)
    for source, row_tokens, row_trained in pieces:
        tokens[source] += int(row_tokens.sum())
        trained[source] += int(row_trained.sum())
    return _counts(int(tokens.sum()), int(trained.sum()), tokens, trained)


def _counts(n_tokens: int, n_trained: int, tokens_per_source, trained_per_source) -> dict:
    return {
        "tokens": n_tokens,
        "supervised_tokens": n_trained,
        "supervised_fraction": round(n_trained / n_tokens, 4) if n_tokens else 0.0,
        "tokens_per_source": [int(n) for n in tokens_per_source],
        "supervised_per_source": [int(n) for n in trained_per_source],
    }


def dataset_statistics(
    settings, parts, eval_parts, train_counts: dict, n_train: int, eval_set, names: list[str], mixture_rows: dict
) -> dict:
    """`train_counts`: the training rows' token counts (`token_counts` or `row_counts`)."""
    dropped, flawed = Counter(), Counter()
    for part in [*parts, *eval_parts]:
        dropped.update(part.stats["rows_dropped"])
        flawed.update(part.stats.get("rows_flawed", {}))
    stats = {
        "sources": {part.name: part.stats for part in parts},
        "eval_sources": {part.name: part.stats for part in eval_parts},
        "rows_read": sum(part.stats["rows_read"] for part in [*parts, *eval_parts]),
        "rows_dropped": dict(sorted(dropped.items())),
        "rows_truncated": sum(part.stats["rows_truncated"] for part in [*parts, *eval_parts]),
        "rows_flawed": dict(sorted(flawed.items())),
        # Rows split into one example per turn whose reasoning the template drops later (reasoning_turns.py).
        "rows_split": sum(part.stats.get("rows_split", 0) for part in [*parts, *eval_parts]),
        "split_examples": sum(part.stats.get("split_examples", 0) for part in [*parts, *eval_parts]),
        "answers_cut": flawed.get("answer_cut", 0),
        "train_examples_per_source": mixture_rows,
        "train_rows": n_train,
        "eval_rows": len(eval_set) if eval_set is not None else 0,
        "max_length": settings.max_length,
        **{key: value for key, value in train_counts.items() if not key.endswith("per_source")},
        "tokens_per_source": dict(zip(names, train_counts["tokens_per_source"])),
        "supervised_tokens_per_source": dict(zip(names, train_counts["supervised_per_source"])),
        "packing": None,
    }
    if settings.packing:
        stats["packing"] = {
            "strategy": settings.packing_strategy,
            "packed_rows": n_train,
            "fill_rate": round(train_counts["tokens"] / max(n_train * settings.max_length, 1), 4),
        }
    return stats
