"""Loading one `data.sources[]` entry with `datasets.load_dataset`: a local file or folder, or a hub id."""
from __future__ import annotations

from pathlib import Path

import datasets

from sft_exp.errors import DataError

# File suffix -> datasets builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def looks_local(path: str) -> bool:
    """A path on this machine (it must then exist), as opposed to a hub dataset id like `org/name`."""
    return (
        path.startswith(("/", "./", "../", "~"))
        or Path(path).suffix in BUILDERS
        or Path(path).expanduser().exists()
    )


def source_label(source) -> str:
    """Where a source's rows come from, as error messages name it."""
    return str(Path(source.path).expanduser()) if looks_local(source.path) else source.path


def source_name(source) -> str:
    """Display name: `name`, else the file stem (or the last part of a hub id)."""
    if source.name:
        return source.name
    path = Path(source.path.rstrip("/"))
    return path.stem if looks_local(source.path) else path.name


def load_source(source, cache_dir: str | None = None) -> datasets.Dataset:
    path = Path(source.path).expanduser()
    try:
        if looks_local(source.path) and path.is_file():
            builder = BUILDERS.get(path.suffix)
            if builder is None:
                raise DataError(f"{path}: unsupported file type; use .jsonl, .json, .parquet, .csv or .arrow")
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir)
        elif looks_local(source.path):
            dataset = datasets.load_dataset(str(path), split=source.split, cache_dir=cache_dir)
        else:
            dataset = datasets.load_dataset(source.path, source.subset, split=source.split, cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types for unreadable files and unknown ids
        raise DataError(
            f"{source_label(source)}: cannot load the data ({type(err).__name__}: {err}). Check the path or hub id, "
            "the split, and that every row has the same fields with the same types."
        ) from err
    if source.max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), source.max_samples)))
    return dataset
