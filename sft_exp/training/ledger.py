"""`<run>/examples.parquet`: what each example taught, per epoch (training) and per evaluation step.

One row per (split, epoch or step, source, source row): its mean loss over its supervised tokens, its
token accuracy and its token count. Read across epochs it gives data maps (Swayamdipta et al. 2020):
per example, confidence = mean over epochs of exp(-loss), variability = their standard deviation;
examples never learned have low confidence, forgotten ones a falling one.

Sums are kept per micro-batch on the device's copy made by the forward (it already synced for its
masks) and moved to the CPU at once; the file is written (rewritten whole) at each evaluation and at
the end of training, by rank 0 with every rank's records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from transformers import TrainerCallback

LEDGER_FILE = "examples.parquet"


def ledger_path(output_dir: str) -> Path:
    """Beside the checkpoints folder of a run (`<run>/checkpoints` -> `<run>/examples.parquet`), else inside output_dir."""
    folder = Path(output_dir)
    return (folder.parent if folder.name == "checkpoints" else folder) / LEDGER_FILE


class ExampleLedger(TrainerCallback):
    """Collects each example's figures as the trainer computes its loss; written (all ranks' records, by rank 0)
    at every evaluation and at the end of training."""

    def __init__(self, path: Path, source_names: Sequence[str], accelerator=None):
        self.path = Path(path)
        self.source_names = list(source_names)
        self.accelerator = accelerator
        self.parts: list[dict] = []

    def on_evaluate(self, args, state, control, **kwargs):
        self.write(self.accelerator)

    def on_train_end(self, args, state, control, **kwargs):
        self.write(self.accelerator)

    def add(self, examples: tuple, split: str, epoch: int | None, step: int) -> None:
        import torch

        # One device-to-host copy per micro-batch (float64 holds the row ids exactly).
        sources, rows, nll, correct, count = torch.stack([t.detach().double() for t in examples]).cpu().numpy()
        sources, rows = sources.astype(np.int64), rows.astype(np.int64)
        self.parts.append({"split": split, "epoch": epoch, "step": step, "source_id": sources, "row_id": rows,
                           "nll": nll, "correct": correct, "tokens": count})  # fmt: skip

    def _gathered(self, accelerator) -> list[dict]:
        if accelerator is None or accelerator.num_processes == 1:
            return self.parts
        import torch.distributed as dist

        everyone = [None] * accelerator.num_processes
        dist.all_gather_object(everyone, self.parts)  # every rank takes part
        return [part for parts in everyone for part in parts]

    def write(self, accelerator=None) -> None:
        """Aggregate the records per example and write the file (a collective under DDP: every rank calls it)."""
        parts = self._gathered(accelerator)
        if accelerator is not None and not accelerator.is_main_process or not parts:
            return
        import pandas as pd

        frame = pd.DataFrame({
            "split": np.concatenate([[p["split"]] * len(p["row_id"]) for p in parts]),
            "epoch": np.concatenate([np.full(len(p["row_id"]), -1 if p["epoch"] is None else p["epoch"]) for p in parts]),
            "step": np.concatenate([np.full(len(p["row_id"]), p["step"]) for p in parts]),
            **{key: np.concatenate([p[key] for p in parts]) for key in ("source_id", "row_id", "nll", "correct", "tokens")},
        })  # fmt: skip
        # Training: one row per example and epoch (an example split over packed rows, or oversampled, adds up);
        # evaluation: one per example and evaluation step.
        keys = ["split", "epoch", "source_id", "row_id"]
        frame.loc[frame["split"] == "train", "step"] = -1
        keys.append("step")
        sums = frame.groupby(keys, as_index=False)[["nll", "correct", "tokens"]].sum()
        sums["loss"] = sums["nll"] / sums["tokens"]
        sums["token_accuracy"] = sums["correct"] / sums["tokens"]
        sums["source"] = [self.source_names[i] for i in sums["source_id"]]
        sums["epoch"] = sums["epoch"].where(sums["epoch"] >= 0)
        sums["step"] = sums["step"].where(sums["step"] >= 0)
        out = sums[["split", "epoch", "step", "source", "row_id", "loss", "token_accuracy", "tokens"]]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        out.astype({"tokens": "int64"}).to_parquet(partial, index=False)
        partial.replace(self.path)
