"""What tool-call normalization costs: sft_exp's data preparation with the current formats.py against
the same preparation with an older formats.py (e.g. the one before tool calls were normalized).

    git show <commit>:sft_exp/data/formats.py > /tmp/formats_before.py
    python benchmarks/bench_tool_normalize.py --baseline /tmp/formats_before.py [--rows 50000] [--repeats 3]
    python benchmarks/bench_tool_normalize.py --baseline /tmp/formats_before.py \
        --conversations tests/assets/conversations/foundry_stock_toolcall_training.messages.jsonl --chat-template chatml

Rows: bench_data.py's 50,000 synthetic conversations (or real rows, repeated, in their own format).
In one process, alternating, each with a fresh datasets cache: (1) the whole `prepare_datasets`
with each formats.py swapped into the encoder, and (2) normalization alone (`field_values` +
`normalize_row` over every row, as the encoder calls them). The machine is shared: compare ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from bench_data import write_conversations


def load_formats(path: Path):
    spec = importlib.util.spec_from_file_location("formats_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_real_rows(path: Path, n_rows: int, source: Path) -> None:
    text = source.read_text()
    records = (
        json.loads(text)
        if text.lstrip().startswith("[")
        else [json.loads(line) for line in text.splitlines() if line.strip()]
    )
    with path.open("w") as out:
        for i in range(n_rows):
            out.write(json.dumps(records[i % len(records)]) + "\n")


def time_prepare(path: Path, tokenizer, formats_module, chat_template) -> tuple[float, int]:
    """Seconds of the whole preparation with `formats_module` doing the normalizing."""
    from sft_exp.data import DataSettings, encoding, prepare_datasets

    saved = encoding.normalize_row, encoding.field_values
    encoding.normalize_row, encoding.field_values = formats_module.normalize_row, formats_module.field_values
    try:
        cfg = DataSettings(sources=[{"path": str(path)}], max_length=1024, assistant_only_loss=True, seed=0,
                           eval_split_size=0, chat_template=chat_template)  # fmt: skip
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            data = prepare_datasets(cfg, tokenizer, cache_dir=cache)
            return time.perf_counter() - start, data.stats["supervised_tokens"]
    finally:
        encoding.normalize_row, encoding.field_values = saved


def time_normalize(rows: list[dict], fmt: str, formats_module) -> float:
    mapping = formats_module.column_map(fmt, {})
    start = time.perf_counter()
    for row in rows:
        formats_module.normalize_row(fmt, formats_module.field_values(row, mapping))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="the older formats.py to compare with")
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the median counts")
    parser.add_argument("--normalize-repeats", type=int, default=10,
                        help="extra alternating runs of normalization alone (cheap; the fastest run counts too)")  # fmt: skip
    parser.add_argument(
        "--conversations", type=Path, default=None, help="real rows (JSON or JSONL), repeated to --rows"
    )
    parser.add_argument(
        "--chat-template", default=None, help="chatml, zephyr or a .jinja file (default: the tokenizer's)"
    )
    args = parser.parse_args()

    import datasets
    from transformers import AutoTokenizer

    from sft_exp.data import formats
    from sft_exp.data.formats import detect_format
    from sft_exp.paths import asset_path

    baseline = load_formats(args.baseline)
    tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
    modules = {"current": formats, "baseline": baseline}
    prepare = {name: [] for name in modules}
    normalize = {name: [] for name in modules}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.jsonl"
        if args.conversations:
            write_real_rows(path, args.rows, args.conversations)
        else:
            write_conversations(path, args.rows)
        loaded = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=folder + "/cache")
        fmt = detect_format("auto", loaded.column_names, {}, str(path))
        rows = loaded.to_list()  # the encoder sees rows the same way: Arrow batches -> Python lists
        for _ in range(args.repeats):
            for name, module in modules.items():
                seconds, supervised = time_prepare(path, tokenizer, module, args.chat_template)
                prepare[name].append(seconds)
                normalize[name].append(time_normalize(rows, fmt, module))
                print(f"{name:<9} prepare {seconds:6.2f}s  normalize alone {normalize[name][-1]:6.3f}s  "
                      f"trained tokens {supervised}", flush=True)  # fmt: skip
        for _ in range(args.normalize_repeats):
            for name, module in modules.items():
                normalize[name].append(time_normalize(rows, fmt, module))
    med = {name: (statistics.median(prepare[name]), statistics.median(normalize[name])) for name in modules}
    (prep_now, norm_now), (prep_before, norm_before) = med["current"], med["baseline"]
    data = args.conversations.name if args.conversations else "synthetic, 3 exchanges each"
    print(f"\n{args.rows} rows ({data}, format {fmt}), median of {args.repeats} alternating run(s)")
    print(
        f"whole preparation: current {prep_now:.2f}s, baseline {prep_before:.2f}s, ratio {prep_now / prep_before:.3f}"
    )
    print(f"normalization alone ({len(normalize['current'])} runs each): median current {norm_now:.3f}s, "
          f"baseline {norm_before:.3f}s, ratio {norm_now / norm_before:.2f}; fastest current "
          f"{min(normalize['current']):.3f}s, baseline {min(normalize['baseline']):.3f}s, "
          f"ratio {min(normalize['current']) / min(normalize['baseline']):.2f}")  # fmt: skip
    print(
        f"normalization's share of the preparation: current {norm_now / prep_now:.1%}, baseline {norm_before / prep_before:.1%}"
    )
    print(f"time normalizing adds to the preparation: {(norm_now - norm_before) / prep_before:+.2%}")


if __name__ == "__main__":
    main()
