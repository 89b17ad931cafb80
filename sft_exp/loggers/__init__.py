"""Experiment trackers behind one interface (`Logger`), several at once: logger=[wandb,tensorboard].

metrics.jsonl is not a logger: the run recorder callback always writes it (sft_exp.run.recorder).
Add a tracker: subclass `Logger` in a module of your own and add a conf/logger/<name>.yaml with
`<name>: {_target_: your.module.YourLogger, ...}`; nothing else changes.

Names are imported on first use, so reading a logger's config schema imports no tracker library.
"""

import importlib

_WHERE = {"Logger": "base", "RunDescription": "base", "MLflowLogger": "mlflow", "TensorBoardLogger": "tensorboard",
          "WandbLogger": "wandb"}  # fmt: skip
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'sft_exp.loggers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sft_exp.loggers.{_WHERE[name]}"), name)
