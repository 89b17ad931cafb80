"""W&B: one run per job in <run>/wandb, offline unless an API key is configured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from sft_exp.loggers.base import Logger, RunDescription

RUN_ID_FILE = "sft_exp_run_id"  # a resumed run continues the W&B run its folder started


class WandbLogger(Logger):
    name = "wandb"

    # group: None: the sweep folder in a multirun, none otherwise. name: None: the job's overrides in a multirun
    # (W&B's random name otherwise). mode: None: online when an API key is configured, offline otherwise; or
    # online / offline / disabled.
    def __init__(
        self,
        project: str = "sft_exp",
        entity: Optional[str] = None,
        group: Optional[str] = None,
        name: Optional[str] = None,
        tags: Sequence[str] = (),
        mode: Optional[str] = None,
    ):
        super().__init__()
        self.project, self.entity, self.group, self.run_name = project, entity, group, name
        self.tags = list(tags)
        self.mode = mode
        self.run = None

    def resolved_mode(self) -> str:
        if self.mode:
            return self.mode
        if os.environ.get("WANDB_MODE"):
            return os.environ["WANDB_MODE"]
        return "online" if _wandb_key_configured() else "offline"

    def _start(self, run: RunDescription) -> None:
        import wandb

        id_file = Path(run.run_dir) / "wandb" / RUN_ID_FILE
        run_id = id_file.read_text().strip() if run.resumed and id_file.is_file() else None
        id_file.parent.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.group or run.group,
            name=self.run_name or run.name,
            tags=self.tags or None,
            mode=self.resolved_mode(),
            dir=str(run.run_dir),
            config=run.config,
            reinit="finish_previous",
            id=run_id,
            resume="allow" if run_id else None,
        )
        id_file.write_text(self.run.id + "\n")

    def _log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def _summary(self, summary: dict) -> None:
        self.run.summary.update(summary)

    def _finish(self, status: str) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=0 if status == "completed" else 1)


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
