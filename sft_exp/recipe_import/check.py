"""The written experiment, checked the way `python -m sft_exp --config-dir DIR experiment=NAME` reads it: its
config dir goes after sft_exp's own on Hydra's search path, so a name sft_exp ships would shadow it."""
from __future__ import annotations

import re
from pathlib import Path

from sft_exp.recipe_import.read import RecipeError
from sft_exp.recipe_import.rows import Row


def refuse_shadowed(name: str) -> None:
    from sft_exp.paths import config_dir

    if (config_dir() / "experiment" / f"{name}.yaml").is_file():
        raise RecipeError(f"experiment={name} is an experiment sft_exp ships, which Hydra would find first; choose "
                          "another name with -o conf/experiment/<name>.yaml")


def check_composes(path: Path, rows: list[Row]) -> None:
    """Compose sft_exp's config with the experiment; a key or value it refuses names the recipe field it came from."""
    from sft_exp.cli_errors import composed
    from sft_exp.errors import ConfigError

    try:
        composed([f"hydra.searchpath=[file://{path.parent.parent}]", f"experiment={path.stem}"])
    except ConfigError as err:
        key = re.search(r"([\w.]+(?:\.\w+)+)", str(err))
        field = next((row.field for row in rows for s in row.settings if key and s.key.lstrip("/") == key.group(1)), None)
        where = f"{field}: " if field else ""
        raise RecipeError(f"{where}the experiment does not compose with sft_exp's config: {err}") from None
