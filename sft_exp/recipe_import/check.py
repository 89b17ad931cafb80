"""The written experiment, checked the way `python -m sft_exp --config-dir DIR experiment=NAME` reads it: its
config dir goes after sft_exp's own on Hydra's search path, so a name sft_exp ships would shadow it."""

from __future__ import annotations

import re
from pathlib import Path

from sft_exp.recipe_import.read import RecipeError
from sft_exp.recipe_import.rows import Row


def refuse_shadowed(path: Path) -> None:
    """An experiment named as one sft_exp ships would never run from another config dir: Hydra finds sft_exp's first.
    (Importing into sft_exp's own conf/, from a checkout's top folder, is fine.)"""
    from sft_exp.paths import config_dir

    shipped = config_dir() / "experiment" / path.name
    if shipped.is_file() and shipped.resolve() != path.resolve():
        raise RecipeError(
            f"experiment={path.stem} is an experiment sft_exp ships, which Hydra would find first; choose "
            "another name with -o conf/experiment/<name>.yaml"
        )


def check_composes(path: Path, rows: list[Row], recipe: Path) -> None:
    """Compose sft_exp's config with the experiment, and pass its trainer.extra_args through the check a run makes
    (a field another key sets is refused there); what fails names the recipe field it came from."""
    from omegaconf import OmegaConf

    from sft_exp.cli_errors import composed
    from sft_exp.errors import ConfigError
    from sft_exp.training.arguments import refuse_owned_extra_args

    try:
        cfg = composed([f"hydra.searchpath=[file://{path.parent.parent}]", f"experiment={path.stem}"])
        trainer = OmegaConf.to_container(cfg.trainer)
        refuse_owned_extra_args(
            trainer.pop("extra_args", {}), trainer, OmegaConf.to_container(cfg.distributed.training_args)
        )
    except ConfigError as err:
        keys = set(re.findall(r"[\w.]+", str(err)))  # the dotted key the message names, e.g. trainer.logging_steps
        field = next((row.field for row in rows for s in row.settings if s.key.lstrip("/") in keys), None)
        raise RecipeError(f"{recipe}: {field or path.name}: sft_exp refuses the imported value: {err}") from None
