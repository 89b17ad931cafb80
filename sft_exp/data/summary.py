"""`describe`: the one line a run logs about its data (the full statistics go to run_info.json)."""
from __future__ import annotations

from pathlib import Path

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
    """"gsm8k: 5 rows, 4 of 100 items; held-out rows (task heldout): 0 rows": matching rows per eval group."""
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
        pieces.append(f"contamination check ({found['ngram']}-word n-grams, mode {found['mode']}): {found['rows']} of "
                      f"{found['rows_checked']} training rows match an eval text "
                      f"[{summary_counts(found) or 'nothing to check against'}{sources}]")
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
        line += (f"; {stats['rows_split']} rows expanded into {stats['split_examples']} per-turn examples "
                 "(the template drops earlier turns' reasoning)")
    if packing:
        line += f"; packed into {packing['packed_rows']} rows, {100 * packing['fill_rate']:.1f}% full"
    return f"{line}; {describe_contamination(stats)}; {describe_eval(stats)}"
