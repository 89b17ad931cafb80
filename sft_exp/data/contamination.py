"""The contamination check: every training row against every text the run is evaluated on.

`data.decontamination` (docs/contamination.md). The method is s1's and open-r1's (`scripts/decontaminate.py`):
lower-cased, whitespace-split words; a training row matches an evaluation text when they share a run of
`ngram` (8) consecutive words, here in any turn of the row (prompts and answers alike). A training row whose
whole text equals a held-out row (a duplicate in the user's file, split across train and eval) matches too,
however short. Exact duplicates among the training rows are counted (`data.deduplicate=exact` drops them).

The evaluation side is a set of hashed n-grams (ngrams.py: EvalIndex); the training rows stream from the
sources' Arrow cache a record batch at a time, so memory does not grow with them (but for 16 bytes a row,
its number and its hash, for the duplicate count). Matches are confirmed on the words and described (file, row, turn, eval item,
the shared n-gram) for the first MAX_DETAILED rows; every matching row is counted. The result is cached
beside datasets' cache, keyed by the training rows, the evaluation texts and this code.

A matching row is described for a person: its file, row and turn, the evaluation item and the n-gram
they share, confirmed on the words, not only on the hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from sft_exp.data import ngrams
from sft_exp.data.cache import code_hash
from sft_exp.data.formats import RAW_JSON_COLUMN, column_map, top_column
from sft_exp.data.ngrams import (
    HELD_OUT,
    EvalGroup,
    EvalIndex,
    EvalTexts,
    NotChecked,
    dataset_piece,
    row_batches,
    row_leaves,
    text_group,
)
from sft_exp.data.statistics import summary_counts
from sft_exp.errors import ConfigError, DataError

_CANDIDATES = 20  # eval items per group a matching row is compared with word by word (those sharing the most hashes)


def _turn(path: str) -> int | None:
    """The turn a string is in (1-based), from its path: messages[3].content -> 4."""
    match = re.match(r"^[^\[.]+\[(\d+)\]", path)
    return int(match.group(1)) + 1 if match else None


def _candidates(index: EvalIndex, hashes: np.ndarray, whole: bool) -> dict:
    """{group: [items]}: the eval items sharing the most of `hashes`, per group, most first."""
    _, groups, items = index.owners(np.unique(hashes), whole)
    by_group: dict = {}
    if not len(groups):
        return by_group
    pairs, counts = np.unique(np.stack([groups.astype(np.int64), items]), axis=1, return_counts=True)
    for k in np.lexsort((pairs[1], -counts)):
        chosen = by_group.setdefault(int(pairs[0, k]), [])
        if len(chosen) < _CANDIDATES:
            chosen.append(int(pairs[1, k]))
    return by_group


def _ngram_match(index: EvalIndex, leaves: list, g: int, items: list) -> dict | None:
    """The item of group g sharing the most n-grams with the row, confirmed on the words: where and which."""
    n, best = index.n, None
    row_grams = [(path, gram) for path, text in leaves for gram in ngrams.word_ngrams(text, n)]
    for item in items:
        item_grams = {gram for _, text in index.item_leaves(g, item) for gram in ngrams.word_ngrams(text, n)}
        shared = [(path, gram) for path, gram in row_grams if gram in item_grams]
        if shared and (best is None or len({s for _, s in shared}) > best[0]):
            best = (len({s for _, s in shared}), item, shared[0])
    if best is None:
        return None  # a hash collision: the words share nothing
    count, item, (path, gram) = best
    return {"kind": "ngram", "item": item, "field": path, "turn": _turn(path), "ngram": gram, "shared_ngrams": count}


def _equal_match(index: EvalIndex, leaves: list, g: int, items: list) -> dict | None:
    words = [ngrams.normalized_words(text) for _, text in leaves]
    for item in items:
        if [ngrams.normalized_words(text) for _, text in index.item_leaves(g, item)] == words:
            quote = " ".join(w for row in words for w in row)
            return {
                "kind": "equal",
                "item": item,
                "field": None,
                "turn": None,
                "ngram": quote[:200],
                "shared_ngrams": None,
            }
    return None


def describe_row(part, columns: list, row: int, index: EvalIndex, ngram_hashes, equal_hashes) -> list[dict]:
    """One match per eval group of a training row: its file, row, turn, the eval item and the shared n-gram."""
    leaves = row_leaves(part.raw, row, columns)
    found = {}
    for whole, hashes, describe in ((True, equal_hashes, _equal_match), (False, ngram_hashes, _ngram_match)):
        for g, items in _candidates(index, hashes, whole).items():
            if g not in found:
                match = describe(index, leaves, g, items)
                if match is not None:
                    found[g] = match
    matches = []
    for g, match in sorted(found.items()):
        number, label = index.item_label(g, match["item"])
        matches.append(
            {
                "source": part.name,
                "file": part.stats["path"],
                "row": int(row),
                "turn": match["turn"],
                "field": match["field"],
                "eval": index.groups[g].name,
                "item": number,
                "item_source": label,
                "kind": match["kind"],
                "ngram": match["ngram"],
                "shared_ngrams": match["shared_ngrams"],
            }
        )
    return matches


__all__ = ["EvalTexts", "NotChecked", "Contamination", "against_groups", "check_training_rows"]

MAX_DETAILED = 1000  # matching rows described in full; every one is counted
CONTAMINATED, DUPLICATE = "contaminated", "duplicate"
_CODE = ("ngrams.py", "contamination.py")


def text_columns(dataset, fmt: str, columns: dict) -> list[str]:
    """The columns a source's format reads (what its rows render from): their strings are the row's text."""
    names = [value for value in column_map(fmt, columns).values() if isinstance(value, str)]
    if RAW_JSON_COLUMN in dataset.column_names:
        return [RAW_JSON_COLUMN, *dict.fromkeys(name.split(".", 1)[0] for name in names)]
    present = dataset.column_names
    return [name for name in dict.fromkeys(top_column(name, present) for name in names) if name in present]


def against_groups(settings, cache_dir=None) -> list[EvalGroup]:
    """The files of `data.decontamination.against`, loaded and checked (a missing column fails here)."""
    from sft_exp.data.sources import load_source, source_columns, source_label

    groups = []
    for i, entry in enumerate(settings.against):
        source = SimpleNamespace(
            path=entry.path, name=None, subset=None, split=entry.split, max_samples=None, expand=None
        )
        raw, label = load_source(source, cache_dir), source_label(source)
        present = source_columns(raw)
        raw_json = RAW_JSON_COLUMN in raw.column_names
        if entry.column is not None:
            top = top_column(entry.column, present)
            if top not in present:
                raise ConfigError(
                    f"data.decontamination.against[{i}].column={entry.column!r}: {label} has no column "
                    f"{entry.column!r} (its columns: {', '.join(present)}); name one of them, or null "
                    "for every text field of each row"
                )
            columns = [RAW_JSON_COLUMN, top] if raw_json else [top]
        else:
            columns = [RAW_JSON_COLUMN] if raw_json else list(raw.column_names)
        name = entry.name or Path(entry.path).name
        groups.append(
            EvalGroup(
                name,
                label,
                "file",
                [dataset_piece(raw, columns, np.arange(len(raw)), label, whole=entry.column is None)],
            )
        )
    return groups


def held_out_group(parts, eval_parts, eval_rows, covers: tuple) -> EvalGroup | None:
    """The run's own held-out rows (eval_path files, eval_sources, the rows split off): whole rows."""
    pieces = [
        dataset_piece(p.raw, text_columns(p.raw, p.fmt, p.columns), p.kept, p.stats["path"], True) for p in eval_parts
    ]
    pieces += [dataset_piece(p.raw, text_columns(p.raw, p.fmt, p.columns), p.kept[rows], p.stats["path"], True)
               for p, rows in zip(parts, eval_rows) if len(rows)]  # fmt: skip
    if not pieces:
        return None
    sources = ", ".join(dict.fromkeys(piece.label for piece in pieces))
    return EvalGroup(HELD_OUT, sources, "held-out", pieces, covers)


@dataclass
class _Scan:
    """What one source's training rows left after the streaming pass."""

    rows: np.ndarray  # the training rows read, ascending
    exact: np.ndarray  # uint64 per row: its whole text as written (whitespace aside), for duplicates; 0: no text
    ngram_hits: list = field(default_factory=list)  # (raw rows, n-gram hashes) found in the eval side
    equal_hits: list = field(default_factory=list)  # (raw rows, whole-text hashes) equal to a held-out row

    def joined(self, name: str, dtypes) -> tuple:
        pairs = getattr(self, name)
        return tuple(
            np.concatenate([p[k] for p in pairs]) if pairs else np.zeros(0, dtype) for k, dtype in enumerate(dtypes)
        )


def _scan(part, columns: list, rows: np.ndarray, index: EvalIndex | None) -> _Scan:
    """One pass over a source's training rows (`rows`, sorted), a record batch at a time."""
    found = _Scan(rows, np.zeros(len(rows), np.uint64))
    for batch, span in row_batches(part.raw, columns, rows):
        for offset, piece in ngrams.slices(batch):
            _scan_slice(found, piece, span[offset : offset + piece.num_rows], columns, index)
    return found


def _scan_slice(found: _Scan, batch, span: np.ndarray, columns: list, index: EvalIndex | None) -> None:
    """One slice of training rows (raw rows `span`): its matches and its rows' hashes."""
    words = ngrams.split_words(*ngrams.text_segments(batch, columns))
    if index is not None and len(index.ngrams[0]):
        hashes, segment = ngrams.ngram_hashes(words, index.n)
        hit = index.contains(hashes)
        found.ngram_hits.append((span[words.seg_row[segment[hit]]], hashes[hit]))
    lower, counts = ngrams.row_hashes(words, words.lower, batch.num_rows)
    if index is not None and len(index.whole[0]):
        equal = index.contains(lower, whole=True) & (counts > 0)
        found.equal_hits.append((span[equal], lower[equal]))
    exact, _ = ngrams.row_hashes(words, words.exact, batch.num_rows)
    found.exact[np.searchsorted(found.rows, span)] = np.where(counts > 0, exact | np.uint64(1), np.uint64(0))


def _repeated_values(hashes: list) -> np.ndarray:
    """The hash values (not 0: no text) that occur more than once, sorted; one sorted copy of the hashes at a time."""
    ordered = np.sort(hashes[0] if len(hashes) == 1 else np.concatenate(hashes))
    repeated = np.unique(ordered[1:][(ordered[1:] == ordered[:-1]) & (ordered[1:] != 0)])
    return repeated


def _duplicates(scans: list[_Scan]) -> list[np.ndarray]:
    """Per source: its training rows whose text (whitespace aside) repeats an earlier training row's, in source
    order, then row order (so the first of each set of equal rows is kept). Memory: the rows' hashes and one
    sorted copy (16 bytes a row), then only the rows whose hash repeats."""
    repeated = _repeated_values([scan.exact for scan in scans]) if scans else np.zeros(0, np.uint64)
    if not len(repeated):
        return [np.zeros(0, np.int64) for _ in scans]
    where, values = [], []  # (source, raw row) and hash of every row whose hash repeats, in source then row order
    for p, scan in enumerate(scans):
        for at in range(0, len(scan.exact), 1 << 16):  # a chunk at a time: no row-sized temporary
            chunk = scan.exact[at : at + (1 << 16)]
            slot = np.minimum(np.searchsorted(repeated, chunk), len(repeated) - 1)
            hit = np.flatnonzero(repeated[slot] == chunk)
            where.append(np.stack([np.full(len(hit), p), scan.rows[at + hit]], axis=1))
            values.append(chunk[hit])
    where, values = np.concatenate(where), np.concatenate(values)
    repeats = np.ones(len(values), bool)
    repeats[np.unique(values, return_index=True)[1]] = False  # the first of each value is kept
    return [np.sort(where[repeats & (where[:, 0] == p), 1]) for p in range(len(scans))]


def _hits_by_row(scan: _Scan) -> dict:
    """{kind: (rows sorted, hashes in that order)} of one source's matches."""
    out = {}
    for kind in ("ngram_hits", "equal_hits"):
        rows, hashes = scan.joined(kind, (np.int64, np.uint64))
        order = np.argsort(rows, kind="stable")
        out[kind] = (rows[order], hashes[order])
    return out


def _of_row(hits: tuple, row: int) -> np.ndarray:
    rows, hashes = hits
    return hashes[np.searchsorted(rows, row, "left") : np.searchsorted(rows, row, "right")]


def _owners(index: EvalIndex, hits: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, group, item) for every eval entry a source's matches hit."""
    triples = []
    for kind, whole in (("ngram_hits", False), ("equal_hits", True)):
        rows, hashes = hits[kind]
        which, groups, items = index.owners(hashes, whole)
        triples.append((rows[which], groups.astype(np.int64), items))
    return tuple(np.concatenate(column) for column in zip(*triples))


@dataclass
class _Found:
    """The check's findings, before a mode acts on them (what the cache holds)."""

    flagged: list  # per source: raw rows matching an eval text
    duplicates: list  # per source: raw rows repeating an earlier training row
    matches: list  # described matches (MAX_DETAILED rows at most)
    per_eval: dict  # group -> {"rows", "items_matched"}


def _best_items(owner_rows: np.ndarray, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
    """(row, group, item) once per row and group: the item of that group sharing the most n-grams with the row
    (a common phrase shared with other items does not count them as matched)."""
    triples, counts = np.unique(np.stack([owner_rows, groups, items]), axis=1, return_counts=True)
    ordered = triples[:, np.lexsort((triples[2], -counts, triples[1], triples[0]))]
    first = np.ones(ordered.shape[1], bool)
    first[1:] = (ordered[0, 1:] != ordered[0, :-1]) | (ordered[1, 1:] != ordered[1, :-1])
    return ordered[:, first]


def _find(parts, columns: list, rows: list, index: EvalIndex | None) -> _Found:
    scans = [_scan(part, cols, part_rows, index) for part, cols, part_rows in zip(parts, columns, rows)]
    duplicates = _duplicates(scans)
    flagged, matches, described = [], [], 0
    per_eval = {g: {"rows": 0, "items_matched": set()} for g in range(len(index.groups) if index else 0)}
    for p, (part, scan) in enumerate(zip(parts, scans)):
        hits = _hits_by_row(scan)
        candidates = np.unique(np.concatenate([hits["ngram_hits"][0], hits["equal_hits"][0]]))
        false_hits = []
        for row in candidates[: max(0, MAX_DETAILED - described)]:
            row_matches = describe_row(
                part, columns[p], int(row), index, _of_row(hits["ngram_hits"], row), _of_row(hits["equal_hits"], row)
            )
            matches += row_matches
            if not row_matches:
                false_hits.append(row)  # the words share nothing: a hash collision
        described += min(len(candidates), max(0, MAX_DETAILED - described))
        flagged.append(np.setdiff1d(candidates, false_hits))
        if index is not None and len(candidates):
            owner_rows, groups, items = _owners(index, hits)
            real = ~np.isin(owner_rows, false_hits)
            if not real.any():
                continue
            _, best_groups, best_items = _best_items(owner_rows[real], groups[real], items[real])
            for g in np.unique(best_groups).tolist():
                per_eval[g]["rows"] += int((best_groups == g).sum())
                per_eval[g]["items_matched"].update(best_items[best_groups == g].tolist())
    counts = {
        index.groups[g].name: {"rows": group["rows"], "items_matched": len(group["items_matched"])}
        for g, group in per_eval.items()
    }
    return _Found(flagged, duplicates, matches, counts)


def _cache_path(key: str, cache_dir) -> Path:
    import datasets

    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    return root / "sft_exp_contamination" / key


def _cached(key: str, cache_dir, compute) -> _Found:
    """The findings for `key` from the cache, or computed and stored there (written then renamed)."""
    path = _cache_path(key, cache_dir)
    arrays, meta = path.with_suffix(".npz"), path.with_suffix(".json")
    if arrays.is_file() and meta.is_file():
        stored, loaded = json.loads(meta.read_text()), np.load(arrays)
        n = stored["sources"]
        return _Found([loaded[f"flagged_{i}"] for i in range(n)], [loaded[f"duplicates_{i}"] for i in range(n)],
                      stored["matches"], stored["per_eval"])  # fmt: skip
    found = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = f".{os.getpid()}.tmp"  # every rank may write the same entry: each its own file, then a rename
    with open(arrays.with_name(arrays.name + mine), "wb") as out:
        np.savez(out, **{f"flagged_{i}": a for i, a in enumerate(found.flagged)},
                 **{f"duplicates_{i}": a for i, a in enumerate(found.duplicates)})  # fmt: skip
    arrays.with_name(arrays.name + mine).replace(arrays)
    meta.with_name(meta.name + mine).write_text(
        json.dumps({"sources": len(found.flagged), "matches": found.matches, "per_eval": found.per_eval})
    )
    meta.with_name(meta.name + mine).replace(meta)
    return found


def _key(parts, columns: list, rows: list, index: EvalIndex | None) -> str:
    from sft_exp.compat import dataset_fingerprint

    digest = hashlib.sha256(code_hash(_CODE).encode() + (index.digest() if index else "no eval side").encode())
    for part, cols, part_rows in zip(parts, columns, rows):
        digest.update(f"{dataset_fingerprint(part.raw)}|{cols}|".encode())
        digest.update(np.ascontiguousarray(part_rows, np.int64))  # the array's own bytes, not a copy
    return digest.hexdigest()[:32]


@dataclass
class Contamination:
    """The check's result and what `data.decontamination.mode` / `data.deduplicate` do with it."""

    mode: str
    deduplicate: str
    found: _Found | None
    stats: dict
    digest: str  # what the evaluation side was (in the data fingerprint)

    def drops(self, p: int) -> dict:
        """{reason: raw rows} source p loses."""
        if self.found is None:
            return {}
        drop = {CONTAMINATED: self.found.flagged[p]} if self.mode == "drop" else {}
        if self.deduplicate == "exact":
            drop[DUPLICATE] = np.setdiff1d(self.found.duplicates[p], drop.get(CONTAMINATED, []))
        return {reason: rows for reason, rows in drop.items() if len(rows)}

    def apply(self, parts, chosen: list) -> list:
        """The training examples each source keeps (`chosen` less what the mode drops, counted as drops in its
        stats); mode `error` stops here, naming the first matching row."""
        if self.mode == "error" and self.stats.get("rows"):
            raise DataError(error_message(self.stats, self.found.matches))
        kept = []
        for p, (part, rows) in enumerate(zip(parts, chosen)):
            drop = self.drops(p)
            for reason, raw_rows in drop.items():
                part.stats["rows_dropped"][reason] = int(len(raw_rows))
                part.stats["rows_kept"] -= int(len(raw_rows))
                part.stats["examples_kept"] -= int(np.isin(part.kept, raw_rows).sum())
                self.stats["per_source"][part.name][f"dropped_{reason}"] = int(len(raw_rows))
            gone = np.concatenate(list(drop.values())) if drop else np.zeros(0, np.int64)
            kept.append(rows[~np.isin(part.kept[rows], gone)] if len(gone) else rows)
            if len(rows) and not len(kept[-1]):
                raise DataError(
                    f"{part.stats['path']}: every training row was dropped ({part.stats['rows_dropped']}) by "
                    f"data.decontamination.mode={self.mode} / data.deduplicate={self.deduplicate}"
                )
        return kept


def error_message(stats: dict, matches: list) -> str:
    first = matches[0]
    where = f"turn {first['turn']} ({first['field']})" if first["turn"] else (first["field"] or "the whole row")
    what = (
        f'shares the {stats["ngram"]}-gram "{first["ngram"]}"'
        if first["kind"] == "ngram"
        else f'is the same text ("{first["ngram"][:80]}")'
    )
    return (
        f"{first['file']}, row {first['row']}, {where}: the training text {what} with eval {first['eval']!r} "
        f"item {first['item']} ({first['item_source']}); {stats['rows']} of {stats['rows_checked']} training rows "
        f"match an evaluation text ({summary_counts(stats)}). Remove them from the data, or set "
        "data.decontamination.mode=drop to train without them (counted), or mode=report to train on them and "
        "report the count."
    )


def _training_rows(part, chosen: np.ndarray) -> np.ndarray:
    """The raw rows a source trains on (each once, sorted), without a row-sized sort: a mask, filled in chunks."""
    trains = np.zeros(len(part.raw), bool)
    for start in range(0, len(chosen), 1 << 16):
        trains[part.kept[chosen[start : start + (1 << 16)]]] = True
    return np.flatnonzero(trains)


def check_training_rows(
    settings, parts, eval_parts, eval_rows: list, chosen: list, eval_texts=(), against: list = (), cache_dir=None
) -> Contamination:
    """The training rows (`chosen` of each source) against the run's evaluation texts: `eval_texts` (EvalTexts of
    the tasks, NotChecked for those unreadable), the held-out rows, the `against` files (against_groups)."""
    options = settings.decontamination
    if options.mode == "off" and settings.deduplicate == "off":
        return Contamination("off", "off", None, {"mode": "off"}, "off")
    index = None
    if options.mode != "off":
        tasks = [t for t in eval_texts if isinstance(t, EvalTexts)]
        covers = tuple(t.name for t in tasks if t.source == HELD_OUT)
        groups = [text_group(t) for t in tasks if t.source != HELD_OUT] + list(against)
        held_out = held_out_group(parts, eval_parts, eval_rows, covers)
        groups += [held_out] if held_out is not None else []
        index = EvalIndex(options.ngram, groups, [t for t in eval_texts if isinstance(t, NotChecked)])
    columns = [text_columns(part.raw, part.fmt, part.columns) for part in parts]
    rows = [_training_rows(part, part_chosen) for part, part_chosen in zip(parts, chosen)]
    found = _cached(_key(parts, columns, rows, index), cache_dir, lambda: _find(parts, columns, rows, index))
    stats = _stats(options, settings.deduplicate, parts, rows, found, index)
    return Contamination(options.mode, settings.deduplicate, found, stats, index.digest() if index else "off")


def _stats(options, deduplicate: str, parts, rows: list, found: _Found, index: EvalIndex | None) -> dict:
    """data_stats.contamination: counts per source and per eval group, what was and was not checked, examples."""
    per_source = {part.name: {"rows_checked": int(len(r)), "rows": int(len(f)), "duplicates": int(len(d))}
                  for part, r, f, d in zip(parts, rows, found.flagged, found.duplicates)}  # fmt: skip
    stats = {"mode": options.mode, "ngram": options.ngram, "deduplicate": deduplicate,
             "rows_checked": sum(len(r) for r in rows), "rows": sum(len(f) for f in found.flagged),
             "duplicates": sum(len(d) for d in found.duplicates), "per_source": per_source}  # fmt: skip
    if index is not None:
        stats["per_eval"] = {g.name: {"kind": g.kind, "source": g.source, "items_checked": g.items,
                                      **found.per_eval.get(g.name, {"rows": 0, "items_matched": 0}),
                                      **({"covers": list(g.covers)} if g.covers else {})}
                             for g in index.groups}  # fmt: skip
        stats["not_checked"] = [{"name": x.name, "reason": x.reason} for x in index.not_checked]
        stats["described"] = len({(m["source"], m["row"]) for m in found.matches})
        stats["examples"] = found.matches[:10]
    return stats
