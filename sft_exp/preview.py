"""See what a run would train on, without loading a model.

    python -m sft_exp.preview [--rows N] [--plain] <the same Hydra overrides as a run>
    python -m sft_exp.preview data=alpaca model=qwen2_5_0_5b data.max_length=512

Composes the config like `python -m sft_exp`, loads only the tokenizer, prepares the data and prints
a few training rows with the trained tokens highlighted (green; `[[...]]` with --plain or when the
output is not a terminal), packed example boundaries (`|`), and the statistics: rows read, rows
dropped by reason, tokens, fraction supervised, packing fill rate.
"""
from __future__ import annotations

import argparse
import json
import sys

from sft_exp.errors import UserError

GREEN, RESET = "\033[42m\033[30m", "\033[0m"


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import sft_exp.config  # noqa: F401  registers the schemas and the ${asset:} resolver
    from sft_exp.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("config", overrides=overrides)


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    source = model_cfg.tokenizer or model_cfg.name_or_path
    if not source:
        raise UserError("model.tokenizer and model.name_or_path are both null; set one so the tokenizer can load")
    return AutoTokenizer.from_pretrained(
        source, revision=model_cfg.get("revision"), trust_remote_code=bool(model_cfg.get("trust_remote_code"))
    )


def _runs(row: dict):
    """(token ids, trained, starts an example) runs of consecutive tokens with the same flags."""
    run, flags = [], None
    for t, (token, label) in enumerate(zip(row["input_ids"], row["labels"])):
        starts = t > 0 and row["position_ids"][t] == 0
        current = (label != -100, starts)
        if run and (current != flags or starts):
            yield run, flags
            run = []
        run.append(token)
        flags = current
    if run:
        yield run, flags


def render_row(tokenizer, row: dict, color: bool) -> str:
    pieces = []
    for ids, (trained, starts) in _runs(row):
        text = tokenizer.decode(ids, skip_special_tokens=False)
        if starts:
            pieces.append("|")
        if trained:
            text = f"{GREEN}{text}{RESET}" if color else f"[[{text}]]"
        pieces.append(text)
    return "".join(pieces)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Preview the training data of a run (no model is loaded).")
    parser.add_argument("--rows", type=int, default=3, help="training rows to print")
    parser.add_argument("--plain", action="store_true", help="mark trained tokens with [[...]] instead of color")
    args, overrides = parser.parse_known_args(argv)
    from sft_exp.data import prepare_datasets, validate_data_config

    try:
        cfg = compose_config(overrides)
        validate_data_config(cfg.data)
        tokenizer = load_tokenizer(cfg.model)
        data = prepare_datasets(cfg.data, tokenizer, attn_implementation=cfg.model.attn_implementation)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    color = sys.stdout.isatty() and not args.plain
    legend = "trained tokens highlighted" if color else "trained tokens in [[...]]"
    for index in range(min(args.rows, len(data.train))):
        print(f"--- training row {index} ({legend}; | starts a packed example)")
        print(render_row(tokenizer, data.train[index], color))
    print(f"--- statistics (fingerprint {data.fingerprint})")
    print(json.dumps(data.stats, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
