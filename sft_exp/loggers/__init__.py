"""Experiment trackers behind one interface (`Logger`), several at once: logger=[wandb,tensorboard].

metrics.jsonl is not a logger: the run recorder callback always writes it (sft_exp.run.recorder).
Add a tracker: subclass `Logger` in a module of your own and add a conf/logger/<name>.yaml with
`<name>: {_target_: your.module.YourLogger, ...}`; nothing else changes.
"""
from sft_exp.loggers.base import Logger, RunDescription
from sft_exp.loggers.mlflow import MLflowLogger
from sft_exp.loggers.tensorboard import TensorBoardLogger
from sft_exp.loggers.wandb import WandbLogger

__all__ = ["Logger", "MLflowLogger", "RunDescription", "TensorBoardLogger", "WandbLogger"]
