"""Reading a recipe file: YAML as TRL's TrlParser reads it (yaml.safe_load), the line of every top-level
key (for messages), and which kind of file it is, so that something else is refused in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sft_exp.errors import UserError
from sft_exp.recipe_import.known import OPEN_R1_FIELDS

READS = (
    "this reads TRL CLI configs (`trl sft --config FILE`: ScriptArguments, SFTConfig and ModelConfig fields, "
    "an `env:` block) and open-r1 SFT recipes, plus an accelerate config with --accelerate-config"
)
# Keys a recipe names its model or data with: one of them makes a file a recipe.
RECIPE_KEYS = ("model_name_or_path", "dataset_name", "dataset_mixture", "datasets")
# Keys that say which other kind of file it is (checked in this order).
OTHER_KINDS = (
    (("defaults", "_target_"), "a Hydra config (it has `defaults`/`_target_`): run it with python -m sft_exp"),
    (("base_model",), "an axolotl config (it has `base_model`)"),
    (("finetuning_type",), "a LLaMA-Factory config (it has `finetuning_type`)"),
    (("distributed_type",), "an accelerate config: pass it with --accelerate-config"),
)


TRL, OPEN_R1 = "a TRL recipe", "an open-r1 recipe"


class RecipeError(UserError):
    """A recipe that cannot be imported as it is: the message names the file, the field and what to do."""


def load_mapping(path: Path, what: str) -> tuple[dict, dict[str, int]]:
    """(the YAML mapping, the line of each top-level key) of a recipe or an accelerate config."""
    if not path.is_file():
        raise RecipeError(f"{path}: no such file")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); {READS}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: not a {what} (a YAML mapping of fields is expected); {READS}")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value} if isinstance(node, yaml.MappingNode) else {}
    return data, lines


def recipe_kind(data: dict[str, Any], path: Path) -> str:
    """open-r1 or trl; any other file is refused in one line saying which formats are read."""
    for markers, kind in OTHER_KINDS:
        if any(key in data for key in markers):
            raise RecipeError(f"{path} is {kind}, not a recipe; {READS}")
    if not any(key in data for key in RECIPE_KEYS):
        raise RecipeError(f"{path} is not a recipe: it names no model or data ({', '.join(RECIPE_KEYS)}); {READS}")
    return OPEN_R1 if any(key in data for key in OPEN_R1_FIELDS) else TRL
