"""`prepare_datasets`: DataSettings + tokenizer -> tokenized, masked, mixed (and packed) train/eval datasets.

sources -> normalize -> validate rows -> render -> tokenize + masks -> truncate / drop
        -> eval split -> mix by weight -> pack -> statistics, fingerprint, held-out examples

Held-out rows of a source: its `eval_path` file when it has one; else, unless `data.eval_sources`
is given, `data.eval_split_size` of its own rows. `data.eval_sources` are held out as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import datasets
import numpy as np

from sft_exp.compat import dataset_fingerprint
from sft_exp.data.cache import data_fingerprint, encode_fingerprint, scan_encoded, tokenizer_hash
from sft_exp.data.contamination import against_groups, check_training_rows
from sft_exp.data.encoding import EncodeSpec, encode_batch
from sft_exp.data.formats import column_map, detect_format
from sft_exp.data.masks import check_template_can_mask
from sft_exp.data.packing import pack_bfd, pack_wrapped
from sft_exp.data.settings import DataSettings, check_packing_attention, loss_policy, resolve_max_length
from sft_exp.data.sources import load_source, source_columns, source_label, source_name
from sft_exp.data.splits import (
    heldout_examples,
    mixture_split,
    rows_to_examples,
    split_by_source_row,
    split_counts,
    weighted_rows,
)
from sft_exp.data.statistics import dataset_statistics, row_counts, token_counts
from sft_exp.data.templates import (
    has_generation_markers,
    resolve_chat_template,
    template_variables,
    warn_if_no_end_of_turn,
)
from sft_exp.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    source_names: list[str]
    stats: dict
    fingerprint: str
    # Every held-out row (up to heldout.MAX_HELDOUT_EXAMPLES) as {"prompt": messages or text, "reference": str}.
    heldout_examples: list[dict] = field(default_factory=list)
    # The chat template the rows were rendered with (None for plain text): the run saves it with the tokenizer.
    chat_template: str | None = None
    # Training rows matching an evaluation text, described (sft_exp.data.contamination; counts in stats).
    contamination: list[dict] = field(default_factory=list)


@dataclass
class EncodedSource:
    """One source after tokenization: its kept rows, which raw rows they were, and its counts."""

    name: str
    raw: datasets.Dataset
    fmt: str
    columns: dict
    rows: datasets.Dataset
    kept: np.ndarray  # raw row index of each kept row
    row_tokens: np.ndarray  # per kept row: its tokens
    row_trained: np.ndarray  # per kept row: its trained tokens (labels != -100, the first token excluded)
    digest: str  # content hash of the kept rows' tokens and labels, in order
    stats: dict


def _encode_source(source, index: int, settings, tokenizer, template, cache_dir, truncate: bool) -> EncodedSource:
    label = source_label(source)
    raw = load_source(source, cache_dir)
    fmt = detect_format(source.format, source_columns(raw), source.column_mapping, label)
    completion_only = settings.completion_only_loss is not False  # default: on for prompt-completion rows
    spec = EncodeSpec(
        tokenizer=tokenizer, fmt=fmt, columns=column_map(fmt, source.column_mapping), template=template,
        template_variables=template_variables(tokenizer), markers=bool(template) and has_generation_markers(template),
        assistant_only=settings.assistant_only_loss, completion_only=completion_only,
        max_length=settings.max_length if truncate else None, source_index=index, source_file=label,
        drop_bad_rows=settings.on_bad_row == "drop", policy=loss_policy(settings),
        split_reasoning_turns=settings.split_reasoning_turns, system_prompt=settings.system_prompt,
    )  # fmt: skip
    spec_values = {k: v for k, v in vars(spec).items() if k != "tokenizer"}
    encoded = raw.map(
        encode_batch, batched=True, with_indices=True, fn_kwargs={"spec": spec}, remove_columns=raw.column_names,
        num_proc=settings.num_proc if settings.num_proc and settings.num_proc > 1 and len(raw) > 1000 else None,
        new_fingerprint=encode_fingerprint(dataset_fingerprint(raw), spec_values, tokenizer_hash(tokenizer)),
        desc=f"Tokenizing {label}",
    )  # fmt: skip
    scan = scan_encoded(encoded)  # streamed a batch at a time: memory does not grow with the rows
    kept = scan.kept
    # Rows, not examples: a row split into per-turn examples is one row kept (examples_kept counts those).
    stats = {"path": label, "format": fmt, "rows_read": len(raw), "rows_kept": int(len(np.unique(kept))),
             "examples_kept": len(kept),
             "rows_dropped": dict(sorted(scan.dropped.items())), "rows_truncated": scan.truncated,
             "rows_flawed": dict(sorted(scan.flawed.items())),
             "rows_split": scan.rows_split, "split_examples": scan.split_examples}  # fmt: skip
    rows = encoded.remove_columns(["drop_reason", "truncated", "flaw", "trained_tokens", "row_id", "split_turn"])
    rows = rows.select(scan.positions) if scan.dropped else rows
    return EncodedSource(source_name(source), raw, fmt, source.column_mapping, rows, kept, scan.row_tokens, scan.row_trained,
                         scan.digest, stats)  # fmt: skip


def _encode_all(sources, settings, tokenizer, template, names, cache_dir, truncate, role) -> list[EncodedSource]:
    encoded = []
    for source in sources:
        part = _encode_source(
            source, names.index(source_name(source)), settings, tokenizer, template, cache_dir, truncate
        )
        if len(part.rows) == 0:
            raise DataError(
                f"{part.stats['path']}: every one of its {part.stats['rows_read']} {role} rows was dropped "
                f"({part.stats['rows_dropped']}); check its format, columns and data.max_length"
            )
        encoded.append(part)
    return encoded


def _splits(settings: DataSettings, source) -> bool:
    """Whether `eval_split_size` of this source's rows are held out (it has no held-out file of its own)."""
    return source.eval_path is None and not settings.eval_sources


def _split(settings, sources, parts: list[EncodedSource], rng) -> tuple[list, list]:
    """(per-part eval row indices, per-part training row indices: weighted, in the order they are mixed)."""
    sizes = [len(np.unique(part.kept)) if _splits(settings, source) else 0 for source, part in zip(sources, parts)]
    eval_counts = split_counts(sizes, settings.eval_split_size)
    eval_rows, train_rows = [], []
    for source, part, n_eval in zip(sources, parts, eval_counts):
        train_idx, eval_idx = split_by_source_row(part.kept, n_eval, rng)
        if len(train_idx) == 0:
            raise DataError(
                f"{part.stats['path']}: data.eval_split_size={settings.eval_split_size} leaves no training rows"
            )
        eval_rows.append(eval_idx)
        train_rows.append(weighted_rows(train_idx, source.weight, rng))
    return eval_rows, train_rows


def _mix(
    parts: list[EncodedSource], train_rows: list, rng, ranks: list | None = None
) -> tuple[datasets.Dataset, np.ndarray]:
    """(the training rows of every source, shuffled together; the shuffle order). One selection of the sources'
    rows, in the shuffled order: a selection per source then one of their concatenation would hold both.
    `ranks`: each training row's place in a mixture already ordered (data.eval_split_from=mixture), not shuffled."""
    offsets = np.cumsum([0] + [len(part.rows) for part in parts[:-1]])
    chosen = np.concatenate([offset + np.asarray(rows, np.int64) for offset, rows in zip(offsets, train_rows)])
    order = rng.permutation(len(chosen)) if ranks is None else np.argsort(np.concatenate(ranks), kind="stable")
    return datasets.concatenate_datasets([part.rows for part in parts]).select(chosen[order]), order


def _mix_then_split(settings, sources, parts: list[EncodedSource]) -> tuple[list, list, list]:
    """data.eval_split_from=mixture: open-r1's order (mixture.mixture_split): each source's weight is the fraction
    of its rows taken, then the held-out rows come from the mixed rows (none with data.eval_sources). Returns
    per part the eval rows, the training rows, and each training row's place in the mixed order."""
    held_out = 0 if settings.eval_sources else settings.eval_split_size
    counts = [len(np.unique(part.kept)) for part in parts]
    source, row, is_eval = mixture_split(counts, [s.weight for s in sources], held_out, settings.seed)
    train_source, train_row = source[~is_eval], row[~is_eval]
    if len(train_source) == 0:
        raise DataError(
            f"data.eval_split_from=mixture: data.eval_split_size={settings.eval_split_size} of the "
            f"{len(source)} mixed rows leaves no training rows"
        )
    examples = np.zeros(len(train_source), dtype=int)  # examples per training row (a split row has several)
    eval_rows, train_rows = [], []
    for k, part in enumerate(parts):
        mine = source == k
        eval_rows.append(np.sort(rows_to_examples(part.kept, row[mine & is_eval])))
        train_rows.append(rows_to_examples(part.kept, row[mine & ~is_eval]))
        examples[train_source == k] = np.unique(part.kept, return_counts=True)[1][train_row[train_source == k]]
    example_source = np.repeat(train_source, examples)
    return eval_rows, train_rows, [np.flatnonzero(example_source == k) for k in range(len(parts))]


def _truncate(batch: dict, max_length: int) -> dict:
    return {key: [values[:max_length] for values in batch[key]] for key in batch}


def _eval_dataset(parts, eval_parts, eval_rows, max_length: int | None) -> datasets.Dataset | None:
    """`max_length`: cut the rows held out of training rows to it (wrapped packing left them whole); None: they
    are cut already. (A map over a selection reads every page of the source's cache file: 0.7 GB of RSS at a
    million rows for 64 held-out rows. So no map where it would change nothing.)"""
    pieces = [part.rows for part in eval_parts]
    held_out = [part.rows.select(rows) for part, rows in zip(parts, eval_rows) if len(rows)]
    if max_length is not None:
        held_out = [piece.map(_truncate, batched=True, fn_kwargs={"max_length": max_length}) for piece in held_out]
    pieces += held_out
    return datasets.concatenate_datasets(pieces) if pieces else None


def _eval_from(settings, sources, parts, eval_parts, eval_rows) -> list[dict]:
    """Where each group of held-out rows came from, for the summary line and run_info.json."""
    origins = []
    from_file = iter(eval_parts)
    for source in sources:
        if source.eval_path is not None:
            part = next(from_file)
            origins.append(
                {"source": part.name, "from": "eval_path", "path": part.stats["path"], "rows": len(part.rows)}
            )
    origins += [{"source": part.name, "from": "eval_sources", "path": part.stats["path"], "rows": len(part.rows)}
                for part in from_file]  # fmt: skip
    if settings.eval_split_from == "mixture":
        if not settings.eval_sources and settings.eval_split_size:
            origins.append(
                {
                    "source": "mixture",
                    "from": "mixture",
                    "eval_split_size": settings.eval_split_size,
                    "rows": sum(map(len, eval_rows)),
                    "per_source": {part.name: len(rows) for part, rows in zip(parts, eval_rows)},
                }
            )
        return origins
    for source, part, rows in zip(sources, parts, eval_rows):
        if _splits(settings, source):
            origins.append({"source": part.name, "from": "eval_split_size", "path": part.stats["path"],
                            "eval_split_size": settings.eval_split_size, "rows": len(rows)})  # fmt: skip
    return origins


def tokenizer_context(tokenizer) -> int | None:
    """The tokenizer's model_max_length when it is a real bound (transformers puts ~1e30 when unknown)."""
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int) and 0 < value < 1_000_000 else None


def warn_cut_answers(stats: dict) -> None:
    """Rows that train but are likely mistakes: truncation that cuts an answer or its end of turn (the model
    learns to stop mid-answer), conversations with no user turn. Counted in the stats and said here."""
    cut, rows = stats.get("answers_cut", 0), stats.get("rows_read", 0)
    no_user = stats.get("rows_flawed", {}).get("no_user_turn", 0)
    if no_user:
        log.warning(
            "%d of %d rows (%.1f%%) are conversations with no user turn (assistant replies to nothing); "
            "they train as they are: check the file's roles and data.sources[].columns.",
            no_user,
            rows,
            100 * no_user / max(rows, 1),
        )
    if cut:
        log.warning(
            "%d of %d rows (%.1f%%) lost part of an answer or its end of turn to data.max_length=%d (%s): the model "
            "learns answers that stop mid-way. Raise data.max_length, or drop such rows from the file.",
            cut,
            rows,
            100 * cut / max(rows, 1),
            stats["max_length"],
            stats.get("max_length_from", "data.max_length"),
        )


def prepare_datasets(
    settings: DataSettings,
    tokenizer,
    *,
    attn_implementation: str | None = None,
    cache_dir: str | None = None,
    model_context: int | None = None,
    eval_texts: Sequence = (),
) -> PreparedData:
    """`settings`: a DataSettings (Hydra builds it from `data.*`: `hydra.utils.instantiate(cfg.data)`).
    `model_context`: the model's max_position_embeddings, the bound of an unset data.max_length.
    `eval_texts`: the texts of the run's evaluations (sft_exp.data.contamination.EvalTexts, or NotChecked for one
    that cannot be read), checked against the training rows with the held-out rows (data.decontamination)."""
    if not isinstance(settings, DataSettings):
        raise TypeError(
            f"prepare_datasets: expected sft_exp.data.DataSettings, got {type(settings).__name__}; "
            "build it with DataSettings(sources=[...], seed=...) or hydra.utils.instantiate(cfg.data)"
        )
    settings, max_length_from = resolve_max_length(settings, model_context or tokenizer_context(tokenizer))
    check_packing_attention(settings, attn_implementation)
    template = resolve_chat_template(settings.chat_template, tokenizer)
    warn_if_no_end_of_turn(template, tokenizer, settings.chat_template)  # the saved model would not stop
    if settings.assistant_only_loss and template is not None:
        check_template_can_mask(template, template_variables(tokenizer))
    against = against_groups(settings.decontamination, cache_dir) if settings.decontamination.mode != "off" else []
    names = list(dict.fromkeys(source_name(s) for s in [*settings.sources, *settings.eval_sources]))
    truncate = not (settings.packing and settings.packing_strategy == "wrapped")
    parts = _encode_all(settings.sources, settings, tokenizer, template, names, cache_dir, truncate, "training")
    heldout_files = [source.heldout_file() for source in settings.sources if source.eval_path is not None]
    eval_parts = _encode_all(
        [*heldout_files, *settings.eval_sources], settings, tokenizer, template, names, cache_dir, True, "eval"
    )
    rng = np.random.default_rng(settings.seed)
    if settings.eval_split_from == "mixture":
        eval_rows, train_rows, ranks = _mix_then_split(settings, settings.sources, parts)
    else:
        (eval_rows, train_rows), ranks = _split(settings, settings.sources, parts, rng), None
    check = check_training_rows(settings, parts, eval_parts, eval_rows, train_rows, eval_texts, against, cache_dir)
    kept_rows = check.apply(parts, train_rows)  # what data.decontamination.mode / data.deduplicate drop
    if ranks is not None:  # the mixture's order less the dropped rows (a dropped row goes with all its copies)
        ranks = [rank[np.isin(rows, kept)] for rank, rows, kept in zip(ranks, train_rows, kept_rows)]
    train, order = _mix(parts, kept_rows, rng, ranks)
    train_rows = kept_rows
    eval_set = _eval_dataset(parts, eval_parts, eval_rows, None if truncate else settings.max_length)
    if settings.packing:
        pack = pack_bfd if settings.packing_strategy == "bfd" else pack_wrapped
        train = pack(train, settings.max_length)
        counts = token_counts(train, len(names))  # packing moves tokens and cuts labels: count anew
    else:
        # Unpacked rows are the sources' rows as encoded: sum their counts instead of reading every token again.
        pieces = [(names.index(part.name), part.row_tokens[rows], part.row_trained[rows])
                  for part, rows in zip(parts, train_rows)]  # fmt: skip
        counts = row_counts(pieces, len(names))
    mixture_rows = {part.name: len(rows) for part, rows in zip(parts, train_rows)}
    stats = dataset_statistics(settings, parts, eval_parts, counts, len(train), eval_set, names, mixture_rows)
    stats["max_length_from"] = max_length_from
    stats["contamination"] = check.stats
    warn_cut_answers(stats)
    stats["eval_from"] = _eval_from(settings, settings.sources, parts, eval_parts, eval_rows)
    heldout_groups = [(part, part.kept) for part in eval_parts]
    heldout_groups += [(part, part.kept[rows]) for part, rows in zip(parts, eval_rows) if len(rows)]
    examples, stats["heldout_examples"] = heldout_examples(heldout_groups, settings.system_prompt)
    layout = {
        "names": names,
        "packing": settings.packing,
        "strategy": settings.packing_strategy,
        "max_length": settings.max_length,
    }
    if check.digest != "off":  # a changed evaluation text is another check of the same rows
        layout["decontamination"] = check.digest
    return PreparedData(
        train=train,
        eval=eval_set,
        source_names=names,
        stats=stats,
        fingerprint=data_fingerprint([part.digest for part in parts], [*train_rows, order], layout),
        heldout_examples=examples,
        chat_template=template,
        contamination=check.found.matches if check.found else [],
    )
