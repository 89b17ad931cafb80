"""The numbers a user checks before training (rows read and dropped, tokens, supervision, packing, the
end-of-turn token's share of the targets), and `describe`: the one line a run logs about its data (the
full statistics go to run_info.json).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pyarrow.compute as pc

from sft_exp.constants import IGNORE_INDEX
from sft_exp.data.cache import record_batches

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
        # Rows split into one example per turn whose reasoning the template drops later (turns.py).
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


NO_EVAL = "no eval set: set data.eval_split_size or a source's eval_path"


def _short(path: str) -> str:
    """The file and its folder (demo/eval.jsonl); a hub id (org/name) stays as it is."""
    return "/".join(Path(path).parts[-2:])


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def describe_eval(stats: dict) -> str:
    """Where the eval rows came from, e.g. "eval: 200 rows from demo/eval.jsonl"."""
    pieces = []
    for origin in stats.get("eval_from", []):
        if origin["from"] == "eval_split_size":
            size, rows, path = origin["eval_split_size"], origin["rows"], _short(origin["path"])
            if size >= 1:  # a row count shared across sources in proportion to their size
                pieces.append(f"{rows} rows of {path} held out")
            elif rows:
                pieces.append(f"{_percent(size)} of {path} held out ({rows} rows)")
            else:
                pieces.append(f"{_percent(size)} of {path} is 0 rows")
        elif origin["from"] == "mixture":
            size = origin["eval_split_size"]
            share = f"{_percent(size)} of the mixed rows" if size < 1 else f"{size:g} of the mixed rows"
            parts = ", ".join(f"{name} {rows}" for name, rows in origin["per_source"].items())
            pieces.append(f"{share} held out ({origin['rows']} rows: {parts})")
        else:
            pieces.append(f"{origin['rows']} rows from {_short(origin['path'])}")
    if not stats.get("eval_rows"):
        return NO_EVAL + (f" ({'; '.join(pieces)})" if pieces else "")
    return "eval: " + "; ".join(pieces)


def summary_counts(contamination: dict) -> str:
    """ "gsm8k: 5 rows, 4 of 100 items; held-out rows (task heldout): 0 rows": matching rows per eval group."""
    parts = []
    for name, group in contamination.get("per_eval", {}).items():
        covers = f" (task {', '.join(group['covers'])})" if group.get("covers") else ""
        items = f", {group['items_matched']} of {group['items_checked']} items" if group.get("rows") else ""
        parts.append(f"{name}{covers}: {group.get('rows', 0)} rows{items}")
    return "; ".join(parts)


def describe_contamination(stats: dict) -> str:
    """The contamination check's counts (sft_exp.data.contamination), per eval group and per source."""
    found = stats.get("contamination") or {"mode": "off"}
    pieces = []
    if found["mode"] == "off":
        pieces.append("contamination check off (data.decontamination.mode=off)")
    else:
        per_source = found.get("per_source", {})
        by_source = ", ".join(f"{name} {counts['rows']}" for name, counts in per_source.items())
        sources = f"; by source: {by_source}" if len(per_source) > 1 else ""
        pieces.append(
            f"contamination check ({found['ngram']}-word n-grams, mode {found['mode']}): {found['rows']} of "
            f"{found['rows_checked']} training rows match an eval text "
            f"[{summary_counts(found) or 'nothing to check against'}{sources}]"
        )
        if found.get("not_checked"):
            pieces.append("not checked: " + ", ".join(x["name"] for x in found["not_checked"]))
    if "duplicates" in found:
        dropped = " (dropped)" if found.get("deduplicate") == "exact" else ""
        pieces.append(f"{found['duplicates']} exact duplicate training rows{dropped}")
    return "; ".join(pieces)


def describe(data) -> str:
    """One readable line about a PreparedData: rows, tokens, supervision, drops, packing, the eval set."""
    stats = data.stats
    dropped = sum(stats.get("rows_dropped", {}).values())
    packing = stats.get("packing") or {}
    reasons = f" {stats['rows_dropped']}" if dropped else ""
    line = (
        f"data: {len(data.train)} train rows from {len(data.source_names)} source(s); "
        f"{stats.get('tokens', 0):,} tokens, {100 * stats.get('supervised_fraction', 0.0):.1f}% supervised; "
        f"{dropped} rows dropped{reasons}, {stats.get('rows_truncated', 0)} truncated"
        + (f" ({stats['answers_cut']} of them inside an answer)" if stats.get("answers_cut") else "")
        + f" at max_length {stats.get('max_length')} (from {stats.get('max_length_from', 'data.max_length')})"
    )
    if stats.get("rows_split"):
        line += (
            f"; {stats['rows_split']} rows expanded into {stats['split_examples']} per-turn examples "
            "(the template drops earlier turns' reasoning)"
        )
    if packing:
        line += f"; packed into {packing['packed_rows']} rows, {100 * packing['fill_rate']:.1f}% full"
    return f"{line}; {describe_contamination(stats)}; {describe_eval(stats)}"


def end_of_turn_stats(train, end: Optional[tuple]) -> dict:
    """The end-of-turn token `end` ((text, id) from templates.end_of_turn_token, or None) and how much of the
    training signal it is: {token, id, trained, supervised, share}.

    `trained`: training targets equal to it; `supervised`: every training target (labels != -100, the
    first token of an example excluded). share 0 means the model was never taught to stop there.
    """
    if end is None:
        return {"token": None, "id": None, "trained": 0, "supervised": None, "share": None}
    trained = supervised = 0
    for batch in record_batches(train, ["labels", "position_ids"]):
        labels, positions = (pc.list_flatten(batch.column(name)).to_numpy() for name in ("labels", "position_ids"))
        targets = (labels != IGNORE_INDEX) & (positions != 0)
        supervised += int(targets.sum())
        trained += int(np.count_nonzero(labels[targets] == end[1]))
    return {
        "token": end[0],
        "id": end[1],
        "trained": trained,
        "supervised": supervised,
        "share": round(trained / supervised, 6) if supervised else 0.0,
    }
