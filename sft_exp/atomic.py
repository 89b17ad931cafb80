"""The one reader and writer of JSON and JSONL files (run folders, evaluations, held-out rows): written then
renamed, so a reader (a resumed run, a report, a sweep) never sees half a file; read as {} / [] where there is
none yet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable


def write_atomically(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, value: Any) -> None:
    write_atomically(path, json.dumps(value, indent=2, default=str) + "\n")


def read_json(path: Path, *, invalid_ok: bool = False) -> dict:
    """A JSON file written by write_json, or {} where there is none yet (and, with `invalid_ok`, where another
    writer left something that does not parse: a report reading a sweep's jobs while they run)."""
    path = Path(path)
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        if invalid_ok:
            return {}
        raise


def write_jsonl(path: Path, rows: Iterable[dict], **dumps: Any) -> None:
    write_atomically(path, "".join(json.dumps(row, **dumps) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file (metrics.jsonl, an evaluation's examples), or [] where there is none yet."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
