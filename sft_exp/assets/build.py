"""Build the embedded default's assets: the demo conversations and the tokenizer trained on them.

    python -m sft_exp.assets.build

Deterministic (seeded): re-running rewrites byte-identical files. Writes, next to this file,
  demo/train.jsonl, demo/eval.jsonl   {"messages": [{"role": ..., "content": ...}, ...]} per line
  tokenizer/                          byte-level BPE + ChatML template, for AutoTokenizer

The tasks are small, deterministic string and digit puzzles with short answers, so a ~1M-parameter
model learns them on a CPU in about a minute; eval prompts never occur in the training file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ASSETS_DIR = Path(__file__).resolve().parent
SEED = 1234
NUM_TRAIN = 4500  # 3000 rows over ~10 epochs overfit: eval lagged train accuracy by ~0.1
NUM_EVAL = 200
VOCAB_SIZE = 1024  # an upper bound: the corpus runs out of merges first (see the build output)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# A small closed word list for counting words: every word is seen often in training.
WORDS = (
    "red blue green cat dog fox owl sun moon star tree leaf rock sand rain snow wind fire "
    "milk tea cake corn fish bird frog bear wolf ship road door lamp book"
).split()

# ChatML. The assistant's content and its <|im_end|> sit inside {% generation %} so that
# return_assistant_tokens_mask marks exactly them; the header and the trailing "\n" are not trained.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>' + '\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


# ----------------------------------------------------------------------------- tasks
# Mostly digit puzzles: digits are single tokens, so an answer is made of the prompt's own tokens
# (copied, reordered, picked or counted). Tasks that map a word to another token (" red" -> "RED")
# and multi-digit addition (carries) stayed near chance after ~1000 steps of a 2-layer model;
# counting one digit's occurrences plateaued at 0.8 and held the total back.
def _digits(rng: random.Random, low: int = 3, high: int = 5) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(low, high)))


def reverse_digits(rng: random.Random) -> Tuple[str, str]:
    s = _digits(rng)
    return f"Reverse {s}", s[::-1]


def sort_digits(rng: random.Random) -> Tuple[str, str]:
    s = _digits(rng)
    return f"Sort {s}", "".join(sorted(s))


def repeat_digits(rng: random.Random) -> Tuple[str, str]:
    s = _digits(rng, 3, 6)
    return f"Repeat {s}", s


def max_digit(rng: random.Random) -> Tuple[str, str]:
    s = _digits(rng)
    return f"Max of {s}", max(s)


def min_digit(rng: random.Random) -> Tuple[str, str]:
    s = _digits(rng)
    return f"Min of {s}", min(s)


def count_words(rng: random.Random) -> Tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(1, 6))
    return f"Count words {' '.join(words)}", str(len(words))


def add_one(rng: random.Random) -> Tuple[str, str]:
    n = rng.randint(0, 999)
    return f"Add one to {n}", str(n + 1)


TASKS: List[Callable[[random.Random], Tuple[str, str]]] = [
    reverse_digits,
    sort_digits,
    repeat_digits,
    max_digit,
    min_digit,
    count_words,
    add_one,
]

# The system message picks the task, so the model must read it.
SYSTEM_TASKS = {
    "Reply with the digits reversed.": lambda s: s[::-1],
    "Reply with the digits sorted.": lambda s: "".join(sorted(s)),
}


def make_conversation(rng: random.Random) -> List[Dict[str, str]]:
    """Mostly single-turn; one in ten has a system message, one in ten a second question."""
    kind = rng.random()
    if kind < 0.1:
        system, answer = rng.choice(sorted(SYSTEM_TASKS.items()))
        s = _digits(rng)
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": s},
            {"role": "assistant", "content": answer(s)},
        ]
    turns = 2 if kind > 0.9 else 1
    messages = []
    for _ in range(turns):
        prompt, answer = rng.choice(TASKS)(rng)
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return messages


def user_prompts(messages: List[Dict[str, str]]) -> List[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def build_rows(seed: int = SEED) -> Tuple[List[dict], List[dict]]:
    """Eval first; then training rows that share no user prompt with any eval row."""
    rng = random.Random(seed)
    eval_rows, held_out = [], set()
    while len(eval_rows) < NUM_EVAL:
        messages = make_conversation(rng)
        if not held_out.intersection(user_prompts(messages)):
            eval_rows.append({"messages": messages})
            held_out.update(user_prompts(messages))
    train_rows = []
    while len(train_rows) < NUM_TRAIN:
        messages = make_conversation(rng)
        if not held_out.intersection(user_prompts(messages)):
            train_rows.append({"messages": messages})
    return train_rows, eval_rows


def write_jsonl(path: Path, rows: List[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


# ----------------------------------------------------------------------------- tokenizer
def render(messages: List[Dict[str, str]]) -> str:
    """The ChatML text of a conversation (what the template produces), to train BPE on."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def train_tokenizer(texts: List[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # "\n" alone, so the "assistant\n" header never merges with the content after it.
            pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
            # One token per digit: sorting, reversing and adding see every digit on its own.
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, path: Path):
    # Imported here so that building the data alone does not need transformers.
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(path))
    # transformers 5 writes its own class name (TokenizersBackend); the alias loads in 4.x too.
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return fast


def main() -> None:
    train_rows, eval_rows = build_rows()
    write_jsonl(ASSETS_DIR / "demo" / "train.jsonl", train_rows)
    write_jsonl(ASSETS_DIR / "demo" / "eval.jsonl", eval_rows)
    tokenizer = train_tokenizer([render(r["messages"]) for r in train_rows])
    fast = save_tokenizer(tokenizer, ASSETS_DIR / "tokenizer")
    print(f"wrote {len(train_rows)} train and {len(eval_rows)} eval rows to {ASSETS_DIR / 'demo'}")
    print(f"wrote a tokenizer with {len(fast)} tokens to {ASSETS_DIR / 'tokenizer'}")


if __name__ == "__main__":
    main()
