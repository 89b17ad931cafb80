"""The contamination check on real data: GSM8K test problems planted among 500 real ShareGPT conversations.

The training file: FastChat's 500 dummy conversations (none shares an 8-gram with GSM8K's test split),
10 GSM8K test problems verbatim (question, then the worked answer) and 10 with their names and numbers
changed but an 8-word run left as it was. The eval side is the `gsm8k` task preset over the whole test
split (1,319 problems). The check must find all 20, each attributed to the test item it came from, flag no
clean row, and agree with open-r1's method (`scripts/decontaminate.py`) written out here.
"""

from __future__ import annotations

import json
import random
import re
from collections import defaultdict

import pytest
from transformers import AutoTokenizer

from sft_exp.data import DataSettings, prepare_datasets
from sft_exp.evaluation.tasks import GenerationTask, GenerationTaskSettings
from sft_exp.evaluation.texts import task_texts
from tests.data.builders import TEST_ASSETS, write_jsonl

GSM8K = TEST_ASSETS / "eval" / "gsm8k_test.jsonl"
SHAREGPT = TEST_ASSETS / "conversations" / "fastchat_dummy_conversation.sharegpt.json"
VERBATIM = list(range(0, 1319, 132))[:10]  # test items planted as they are
CANDIDATES = range(5, 1319, 41)  # the first 10 of these whose changed copy keeps an 8-word run are planted changed
NAMES = ["Zorblat", "Quennivere", "Thaddeus", "Ximena", "Bartholomew", "Ottoline", "Percival", "Wilhelmina"]


# open-r1's scripts/decontaminate.py (normalize_string, word_ngrams, build_ngram_lookup), as it is written there.
def normalize_string(text: str) -> str:
    text = text.lower().strip()
    return " ".join(text.split())


def word_ngrams(text: str, n: int) -> list:
    words = text.split()
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def build_ngram_lookup(documents: list, ngram_size: int = 8) -> dict:
    lookup = defaultdict(set)
    for doc_id, document in enumerate(documents):
        for ngram in word_ngrams(normalize_string(document), ngram_size):
            lookup[ngram].add(doc_id)
    return lookup


def changed(problem: dict, lower_words: set, rng: random.Random) -> tuple[str, str]:
    """The problem with its names (capitalized words never written in lower case in the test split) and its
    numbers replaced: a reworded copy such as "Bella bought stamps" for "Max bought stamps"."""
    names = sorted({w for w in re.findall(r"\b[A-Z][a-z]+\b", problem["question"]) if w.lower() not in lower_words})
    replacement = {name: rng.choice(NAMES) for name in names}

    def rewrite(text: str) -> str:
        text = re.sub(r"\d+", lambda m: str(int(m.group()) + 7), text)
        return re.sub(r"\b[A-Z][a-z]+\b", lambda m: replacement.get(m.group(), m.group()), text)

    return rewrite(problem["question"]), rewrite(problem["answer"])


def planted_file(tmp_path):
    """(training file, {row: test item} of the planted rows), rows in a seeded random order."""
    problems = [json.loads(line) for line in GSM8K.read_text().splitlines()]
    roles = {"human": "user", "gpt": "assistant"}
    clean = [{"messages": [{"role": roles[t["from"]], "content": t["value"]} for t in row["conversations"]]}
             for row in json.loads(SHAREGPT.read_text())]  # fmt: skip
    rng = random.Random(0)
    lower_words = {w for p in problems for w in re.findall(r"\b[a-z]+\b", p["question"])}
    planted = []
    for item in VERBATIM:
        planted.append((item, problems[item]["question"], problems[item]["answer"]))
    for item in CANDIDATES:
        question, answer = changed(problems[item], lower_words, rng)
        original = set(word_ngrams(normalize_string(problems[item]["question"] + " " + problems[item]["answer"]), 8))
        kept = set(word_ngrams(normalize_string(question + " " + answer), 8)) & original
        renamed = re.findall(r"\b[A-Z][a-z]+\b", question) != re.findall(r"\b[A-Z][a-z]+\b", problems[item]["question"])
        if renamed and kept and len(planted) < 20:
            planted.append((item, question, answer))
    assert len(planted) == 20
    rows = [(None, row) for row in clean]
    rows += [(item, {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
             for item, q, a in planted]  # fmt: skip
    rng.shuffle(rows)
    path = write_jsonl(tmp_path / "train.jsonl", [row for _, row in rows])
    return path, {i: item for i, (item, _) in enumerate(rows) if item is not None}, problems


def gsm8k_task() -> GenerationTask:
    """The `gsm8k` preset (conf/evals/gsm8k.yaml: its columns and prompt template) over the whole test split."""
    from omegaconf import OmegaConf

    from sft_exp.paths import config_dir

    preset = OmegaConf.to_container(OmegaConf.load(config_dir() / "evals" / "gsm8k.yaml"))["gsm8k"]
    preset.update(path=str(GSM8K), limit=None)
    return GenerationTask.build("gsm8k", GenerationTaskSettings(**preset))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("planted")
    path, truth, problems = planted_file(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(TEST_ASSETS / "tokenizers" / "phi-3-mini"))
    settings = DataSettings(sources=[{"path": str(path)}], chat_template="chatml", max_length=4096,
                            assistant_only_loss=True, eval_split_size=0, seed=0)  # fmt: skip
    data = prepare_datasets(settings, tokenizer, eval_texts=task_texts(gsm8k_task()), cache_dir=str(tmp_path / "cache"))
    return path, truth, problems, data


def test_every_planted_problem_is_found_and_attributed_and_no_clean_row_is_flagged(planted):
    path, truth, problems, data = planted
    found = data.stats["contamination"]
    assert found["rows_checked"] == 520
    assert found["rows"] == 20 and found["per_eval"]["gsm8k"]["rows"] == 20
    assert found["per_eval"]["gsm8k"]["items_checked"] == 1319 and found["per_eval"]["gsm8k"]["items_matched"] == 20
    by_row = {match["row"]: match for match in data.contamination}
    assert set(by_row) == set(truth)  # all 20 and nothing else: 0 of the 500 clean rows
    for row, item in truth.items():
        match = by_row[row]
        assert (match["eval"], match["item"]) == ("gsm8k", item), match
        assert match["file"] == str(path) and match["turn"] in (1, 2) and match["field"].startswith("messages[")
        assert match["ngram"] in normalize_string(problems[item]["question"] + " " + problems[item]["answer"])
        assert match["item_source"] == f"row {item} of {GSM8K}"


def test_open_r1s_method_finds_the_same_rows(planted):
    path, truth, problems, data = planted
    lookup = build_ngram_lookup([p["question"] for p in problems] + [p["answer"] for p in problems])
    flagged = {}
    for i, line in enumerate(path.read_text().splitlines()):
        docs = set()
        for message in json.loads(line)["messages"]:
            for ngram in word_ngrams(normalize_string(message["content"]), 8):
                docs |= {doc % len(problems) for doc in lookup.get(ngram, ())}
        if docs:
            flagged[i] = docs
    assert set(flagged) == {match["row"] for match in data.contamination} == set(truth)
    assert all(truth[row] in docs for row, docs in flagged.items())


def test_hashed_ngrams_are_open_r1s_ngrams_whatever_the_whitespace():
    import numpy as np
    import pyarrow as pa

    from sft_exp.data import ngrams

    texts = [
        "  The quick\tbrown fox\n\njumps over the lazy dog  ",
        "",
        None,
        "THE QUICK BROWN FOX JUMPS OVER THE LAZY",
        "one two three",
        "\u00a0non-breaking\u00a0space counts as whitespace too in both splits, it does",
    ]
    rows = np.array([0, 0, 1, 2, 2, 4])  # row 3 has no text at all
    words = ngrams.split_words(pa.array(texts, pa.large_string()), rows)
    hashes, segment = ngrams.ngram_hashes(words, 4)
    expected = [(i, gram) for i, text in enumerate(texts) for gram in word_ngrams(normalize_string(text or ""), 4)]
    assert segment.tolist() == [i for i, _ in expected]
    by_gram = {}
    for (_, gram), value in zip(expected, hashes.tolist()):
        assert by_gram.setdefault(gram, value) == value  # the same n-gram, the same hash
    assert len(set(by_gram.values())) == len(by_gram)  # different n-grams, different hashes
    whole, counts = ngrams.row_hashes(words, words.lower, 5)
    assert counts.tolist() == [
        sum(len((texts[i] or "").split()) for i in np.flatnonzero(rows == row)) for row in range(5)
    ]
