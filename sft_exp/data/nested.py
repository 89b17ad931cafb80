"""Nested fields: a `columns` value may be a path into a row (`instances.0.output`: key `instances`,
list element 0, key `output`), and `expand` turns a column holding a list of objects into one row per
element (self-instruct's `instances: [{input, output}]`), the other columns repeated."""
from __future__ import annotations

import json


def top_column(name: str, present) -> str:
    """The file column a (possibly dotted) name reads: the name itself if the file has it, else its first part."""
    return name if name in present or "." not in name else name.split(".", 1)[0]


def lookup(row: dict, name: str):
    """The value at `name` in `row`: a column, else a dotted path (numbers index lists); None when absent."""
    if name in row or "." not in name:
        return row.get(name)
    value = row
    for part in name.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def expand_rows(batch: dict, column: str, raw_json_column: str) -> dict:
    """A map batch with each row repeated once per element of its `column` list, that element in its place
    (rows whose list is empty or missing are left out: they hold nothing to train)."""
    out = {key: [] for key in batch}
    size = len(next(iter(batch.values()))) if batch else 0
    for i in range(size):
        if raw_json_column in batch:
            row = json.loads(batch[raw_json_column][i])
            items = row.get(column) if isinstance(row, dict) else None
            for item in items if isinstance(items, list) else []:
                out[raw_json_column].append(json.dumps({**row, column: item}))
            continue
        items = batch[column][i]
        for item in items if isinstance(items, list) else []:
            for key in batch:
                out[key].append(item if key == column else batch[key][i])
    return out
