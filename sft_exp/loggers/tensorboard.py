"""TensorBoard: event files in <run>/tensorboard (torch's SummaryWriter; needs the tensorboard package)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from sft_exp.loggers.base import Logger, RunDescription


class TensorBoardLogger(Logger):
    name = "tensorboard"

    # log_dir: None: <run folder>/tensorboard.
    def __init__(self, log_dir: Optional[str] = None):
        super().__init__()
        self.log_dir = log_dir
        self.writer = None

    def _start(self, run: RunDescription) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = Path(self.log_dir) if self.log_dir else Path(run.run_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(log_dir))
        if not run.resumed:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(run.config, sort_keys=False) + "```", 0)

    def _log(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def _summary(self, summary: dict) -> None:
        for key, value in summary.items():
            self.writer.add_scalar(f"summary/{key}", value, 0)

    def _finish(self, status: str) -> None:
        writer, self.writer = self.writer, None
        writer.close()
