"""Loading one `data.sources[]` entry with `datasets.load_dataset`: a local file or folder, or a hub id.

`datasets` loads on first use: the settings' checks (looks_local, source_name) need none of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from sft_exp.data.formats import RAW_JSON_COLUMN
from sft_exp.errors import ConfigError, DataError

if TYPE_CHECKING:  # datasets loads on first use: the settings' checks import this module
    import datasets


# File suffix -> datasets builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def looks_local(path: str) -> bool:
    """A path on this machine (it must then exist), as opposed to a hub dataset id like `org/name`."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).suffix in BUILDERS or Path(path).expanduser().exists()


def refuse_streaming(entry: dict, key: str) -> None:
    """`streaming` on a source is refused with the way out, instead of as an unknown key."""
    if "streaming" in entry:
        raise ConfigError(
            f"{key}.streaming={entry['streaming']!r}: sources are not streamed. Each source is tokenized once into "
            "the datasets cache on disk (HF_DATASETS_CACHE) and read from there memory-mapped, so preparation's "
            "memory stays flat whatever the rows, but the cache needs disk: about 16 bytes a token (a 270-token "
            "row: 4.3 KB) plus the raw rows. For a source larger than that disk, set its max_samples, or point "
            "HF_DATASETS_CACHE at a bigger disk; then remove `streaming`."
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


def _load_json_rows(path: Path) -> datasets.Dataset:
    """Rows Arrow cannot type as one table, kept as JSON strings so each row is checked on its own."""
    import datasets

    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = []
        for line_number, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"{path}, line {line_number + 1}: not valid JSON ({err}); fix or remove the line"
                ) from None
    return datasets.Dataset.from_dict({RAW_JSON_COLUMN: [json.dumps(row) for row in rows]})


def source_columns(dataset: datasets.Dataset) -> list[str]:
    """The columns of a source; for raw JSON rows, the keys found in the first rows."""
    if RAW_JSON_COLUMN not in dataset.column_names:
        return dataset.column_names
    keys = {}
    for raw in dataset[:100][RAW_JSON_COLUMN]:
        row = json.loads(raw)
        keys.update(dict.fromkeys(row if isinstance(row, dict) else []))
    return list(keys)


def load_source(source, cache_dir: str | None = None) -> datasets.Dataset:
    import datasets

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
    except Exception as err:
        if path.suffix not in (".json", ".jsonl") or not path.is_file():
            raise _unreadable(source, err) from err
        dataset = _load_json_rows(path)  # mixed types across rows: check them row by row instead
    if getattr(source, "kept_columns", None):
        dataset = _keep_columns(dataset, source)
    if source.max_samples is not None:
        dataset = dataset.select(range(min(len(dataset), source.max_samples)))
    if getattr(source, "expand", None):
        dataset = _expanded(dataset, source)
    return dataset


def _keep_columns(dataset: datasets.Dataset, source) -> datasets.Dataset:
    """`columns` as a keep-list (open-r1's `select_columns`): only those columns are read; one that is absent
    is an error naming the columns there are."""
    kept = source.kept_columns
    present = source_columns(dataset)
    absent = [name for name in kept if name not in present]
    if absent:
        raise DataError(
            f"{source_label(source)}: columns={kept} keeps {absent}, which the data does not have (its "
            f"columns: {present}); list the columns to keep, or map format fields with {{field: column}}"
        )
    if RAW_JSON_COLUMN not in dataset.column_names:
        return dataset.select_columns(kept)
    keep = lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k in kept})  # noqa: E731
    return dataset.map(lambda row: {RAW_JSON_COLUMN: keep(row[RAW_JSON_COLUMN])}, desc="Keeping columns")


def _expanded(dataset: datasets.Dataset, source) -> datasets.Dataset:
    """`expand`: one row per element of the list column (sft_exp.data.formats)."""
    from sft_exp.data.formats import RAW_JSON_COLUMN, expand_rows

    if RAW_JSON_COLUMN not in dataset.column_names and source.expand not in dataset.column_names:
        raise DataError(
            f"{source_label(source)}: expand={source.expand!r} is not a column (it has {dataset.column_names})"
        )
    return dataset.map(
        expand_rows,
        batched=True,
        fn_kwargs={"column": source.expand, "raw_json_column": RAW_JSON_COLUMN},
        desc=f"Expanding {source.expand}",
    )


def _unreadable(source, err: Exception) -> DataError:
    """datasets raises many types for unreadable files and unknown ids; one message for all of them."""
    return DataError(
        f"{source_label(source)}: cannot load the data ({type(err).__name__}: {err}). Check the path or hub id "
        "and the split."
    )
