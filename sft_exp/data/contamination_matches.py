"""A matching training row described for a person: its file, row and turn, the evaluation item it matches and
the n-gram they share, confirmed on the words (open-r1's own n-gram strings), not only on the hashes."""
from __future__ import annotations

import re

import numpy as np

from sft_exp.data import ngrams
from sft_exp.data.contamination_index import EvalIndex, row_leaves

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
            return {"kind": "equal", "item": item, "field": None, "turn": None, "ngram": quote[:200], "shared_ngrams": None}
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
        matches.append({"source": part.name, "file": part.stats["path"], "row": int(row), "turn": match["turn"],
                        "field": match["field"], "eval": index.groups[g].name, "item": number, "item_source": label,
                        "kind": match["kind"], "ngram": match["ngram"], "shared_ngrams": match["shared_ngrams"]})
    return matches
