"""See what a run would train on, without loading a model.

    python -m sft_exp.preview [--rows N] [--plain] [--find TEXT] <the same Hydra overrides as a run>
    python -m sft_exp.preview data=alpaca model=qwen2_5_0_5b data.max_length=512
    python -m sft_exp.preview --find '<tool_call>' ...   # only rows with a tool call (Qwen's layout)

Composes the config like `python -m sft_exp`, loads only the tokenizer, prepares the data and prints
a few training rows with the trained tokens highlighted (green; `[[...]]` with --plain or when the
output is not a terminal; a weight other than 1 follows its tokens as `x2`, on yellow), packed example
boundaries (`|`), and the statistics: rows read, rows
dropped by reason, tokens, fraction supervised, packing fill rate.
"""

from __future__ import annotations

import argparse
import json
import sys

from sft_exp.constants import IGNORE_INDEX
from sft_exp.errors import UserError

GREEN, YELLOW, RESET = "\033[42m\033[30m", "\033[43m\033[30m", "\033[0m"


def compose_config(overrides: list[str]):
    from sft_exp.cli_errors import composed
    from sft_exp.preflight import check_known_keys

    cfg = composed(overrides)
    check_known_keys(cfg)
    return cfg


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer or model_cfg.name_or_path
    if not source:
        raise UserError("model.tokenizer and model.name_or_path are both null; set one so the tokenizer can load")
    tokenizer = AutoTokenizer.from_pretrained(
        source, revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code"))
    )
    if model_cfg.get("eos_token"):  # what training appends: as the run's ModelLoader sets it
        from sft_exp.models.loader import set_eos_token

        set_eos_token(tokenizer, model_cfg.eos_token, source)
    return tokenizer


def _runs(row: dict):
    """(token ids, (trained, starts an example, loss weight)) runs of consecutive tokens with the same flags."""
    run, flags = [], None
    weights = row.get("loss_weights") or [1.0] * len(row["input_ids"])
    for t, (token, label, weight) in enumerate(zip(row["input_ids"], row["labels"], weights)):
        starts = t > 0 and row["position_ids"][t] == 0
        trained = label != IGNORE_INDEX
        current = (trained, starts, float(weight) if trained else 0.0)
        if run and (current != flags or starts):
            yield run, flags
            run = []
        run.append(token)
        flags = current
    if run:
        yield run, flags


def _weight_mark(weight: float) -> str:
    """A trained run's weight after it, where it is not 1: `[[reply]]x2`, `[[reply]]x0.5`."""
    return "" if weight == 1 else f"x{weight:g}"


def render_row(tokenizer, row: dict, color: bool) -> str:
    pieces = []
    for ids, (trained, starts, weight) in _runs(row):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if starts:
            pieces.append("|")
        if trained:
            mark = _weight_mark(weight)
            text = f"{GREEN if weight == 1 else YELLOW}{text}{RESET}{mark}" if color else f"[[{text}]]{mark}"
        pieces.append(text)
    return "".join(pieces)


def _data_settings(data_cfg):
    """The run's DataSettings; it checks data.* when built (Hydra wraps its ConfigError: unwrap it)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(data_cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Preview the training data of a run (no model is loaded).")
    parser.add_argument("--rows", type=int, default=3, help="training rows to print")
    parser.add_argument("--plain", action="store_true", help="mark trained tokens with [[...]] instead of color")
    parser.add_argument("--find", metavar="TEXT", help="print only training rows whose rendered text contains TEXT")
    args, overrides = parser.parse_known_args(argv)
    from sft_exp.data import prepare_datasets

    try:
        cfg = compose_config(overrides)
        settings = _data_settings(cfg.data)
        tokenizer = load_tokenizer(cfg.model)
        data = prepare_datasets(settings, tokenizer, attn_implementation=cfg.model.attn_implementation)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2  # a user error, as in training
    color = sys.stdout.isatty() and not args.plain
    legend = "trained tokens highlighted" if color else "trained tokens in [[...]], xW: loss weight W"
    shown = 0
    for index in range(len(data.train)):
        if shown == args.rows:
            break
        row = data.train[index]
        if args.find and args.find not in tokenizer.decode(row["input_ids"], skip_special_tokens=False):
            continue
        print(f"--- training row {index} ({legend}; | starts a packed example)")
        print(render_row(tokenizer, row, color))
        shown += 1
    if args.find and not shown:
        print(f"--- no training row contains {args.find!r}")
    print(f"--- statistics (fingerprint {data.fingerprint})")
    print(json.dumps(data.stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
