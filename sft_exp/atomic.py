"""Write then rename: a reader (a resumed run, a report, a sweep) never sees half a file."""
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


def read_json(path: Path) -> dict:
    """A JSON file written by write_json, or {} where there is none yet."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def write_jsonl(path: Path, rows: Iterable[dict], **dumps: Any) -> None:
    write_atomically(path, "".join(json.dumps(row, **dumps) + "\n" for row in rows))
