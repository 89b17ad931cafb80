"""The numbers a user checks before training: rows read and dropped, tokens, supervision, packing."""
from __future__ import annotations

from collections import Counter

import numpy as np



def _token_counts(table, n_sources: int) -> dict:
    """Tokens and trained targets (labels != -100, first token of an example excluded: it is never predicted)."""

    def flat(name: str) -> np.ndarray:
        return table.column(name).combine_chunks().flatten().to_numpy()

    sources, labels, positions = flat("source_ids"), flat("labels"), flat("position_ids")
    trained = (labels != -100) & (positions != 0)
    return {
        "tokens": int(len(labels)),
        "supervised_tokens": int(trained.sum()),
        "supervised_fraction": round(float(trained.mean()), 4) if len(labels) else 0.0,
        "tokens_per_source": np.bincount(sources, minlength=n_sources).tolist(),
        "supervised_per_source": np.bincount(sources[trained], minlength=n_sources).tolist(),
    }


def dataset_statistics(cfg, parts, eval_parts, tokens, n_train: int, eval_set, names: list[str], mixture_rows: dict) -> dict:
    """`tokens`: the training rows' token columns (an Arrow table)."""
    dropped = Counter()
    for part in [*parts, *eval_parts]:
        dropped.update(part.stats["rows_dropped"])
    train_counts = _token_counts(tokens, len(names))
    stats = {
        "sources": {part.name: part.stats for part in parts},
        "eval_sources": {part.name: part.stats for part in eval_parts},
        "rows_read": sum(part.stats["rows_read"] for part in [*parts, *eval_parts]),
        "rows_dropped": dict(sorted(dropped.items())),
        "rows_truncated": sum(part.stats["rows_truncated"] for part in [*parts, *eval_parts]),
        "train_examples_per_source": mixture_rows,
        "train_rows": n_train,
        "eval_rows": len(eval_set) if eval_set is not None else 0,
        "max_length": cfg.max_length,
        **{key: value for key, value in train_counts.items() if not key.endswith("per_source")},
        "tokens_per_source": dict(zip(names, train_counts["tokens_per_source"])),
        "supervised_tokens_per_source": dict(zip(names, train_counts["supervised_per_source"])),
        "packing": None,
    }
    if cfg.packing:
        stats["packing"] = {
            "strategy": cfg.packing_strategy,
            "packed_rows": n_train,
            "fill_rate": round(train_counts["tokens"] / max(n_train * cfg.max_length, 1), 4),
        }
    return stats
