"""Builders for the data tests: a word-level tokenizer made in code, JSONL files, conversations."""

from __future__ import annotations

import json
import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from sft_exp.data import DataSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = (REPO_ROOT / "../shared/data").resolve()
TEST_ASSETS = REPO_ROOT / "tests" / "assets"  # the real files shipped with the tests (licences in its README)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<s>",
    "</s>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
]
WORDS = (
    "What is two plus three four five six Four Six And Paris France capital of the The Hello Hi Bye hi there "
    "system user assistant tool You are helpful Be brief Answer Question Reverse abc cba Translate cat chat "
    "weather get_weather tool_call city location sunny It s name arguments function type object properties string "
    "think and"
).split()


def make_word_tokenizer(chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """Words and single characters are tokens, so expected tokens can be written by hand."""
    vocab = {token: i for i, token in enumerate(["[UNK]", *SPECIAL_TOKENS])}
    for token in [*string.printable, *WORDS]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w]"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )  # fmt: skip
    tokenizer.chat_template = chat_template
    return tokenizer


def supervised_tokens(tokenizer, row: dict) -> list[str]:
    """The tokens a row trains on, as strings."""
    return [tokenizer.convert_ids_to_tokens(t) for t, label in zip(row["input_ids"], row["labels"]) if label != -100]


def settings(**values) -> DataSettings:
    """DataSettings for a test: seed 0 and, unless given, no rows held out (most tests read every row)."""
    return DataSettings(**{"seed": 0, "eval_split_size": 0, **values})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def conversation(*turns: str, system: str | None = None) -> dict:
    """{"messages": [...]} alternating user/assistant from `turns`."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    return {"messages": messages}


def trained_runs(tokenizer, ids: list, labels: list) -> list[str]:
    """Decoded runs of consecutive trained tokens (labels != IGNORE_INDEX)."""
    from sft_exp.constants import IGNORE_INDEX

    runs, current = [], []
    for token, label in zip(list(ids) + [None], list(labels) + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs
