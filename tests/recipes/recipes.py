"""The recipes the import tests use (tests/assets/recipes: real TRL and open-r1 files, Apache-2.0), the
reference TRL parse of each, and sft_exp's side: the imported experiment, composed."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES_DIR = REPO / "tests" / "assets" / "recipes"
RECIPES = sorted([*RECIPES_DIR.glob("open-r1/*__sft__*.yaml"), RECIPES_DIR / "trl" / "example_config.yaml"])
ACCELERATE = {"ddp": RECIPES_DIR / "open-r1" / "accelerate_ddp.yaml", "fsdp": RECIPES_DIR / "open-r1" / "accelerate_fsdp.yaml",
              "zero3": RECIPES_DIR / "open-r1" / "accelerate_zero3.yaml"}  # fmt: skip

# TRL 1.16 refuses these names ("Unknown arguments from config file"): the modernisation the parity test
# applies, explicitly, before TRL's own parser reads a recipe. Each is the field the name became.
MODERNISED = {"torch_dtype": "dtype", "max_seq_length": "max_length", "evaluation_strategy": "eval_strategy",
              "use_liger": "use_liger_kernel", "preprocessing_num_workers": "dataset_num_proc",
              "warmup_ratio": "warmup_steps"}  # fmt: skip
DROPPED = ("overwrite_output_dir",)  # gone from transformers 5: read by nobody


def modernised(recipe: dict) -> dict:
    """A recipe as TRL 1.16 accepts it: old names renamed, dataset_configs: [x] as dataset_config: x, and
    use_cpu (TRL refuses bf16 on a machine without a GPU unless use_cpu is set: "Your setup doesn't support
    bf16/gpu")."""
    out = {}
    for key, value in recipe.items():
        if key in DROPPED:
            continue
        if key == "dataset_configs":
            key, value = "dataset_config", value[0]
        out[MODERNISED.get(key, key)] = value
    import torch

    if not torch.cuda.is_available():
        out["use_cpu"] = True
    return out


def open_r1_classes():
    """open-r1's ScriptArguments and SFTConfig (open_r1/configs.py at 1416fa0c, Apache-2.0): TRL's with open-r1's
    fields, as its sft.py parses a recipe: TrlParser((ScriptArguments, SFTConfig, ModelConfig))."""
    import trl

    @dataclass
    class ScriptArguments(trl.ScriptArguments):
        dataset_name: Optional[str] = None
        dataset_mixture: Optional[dict[str, Any]] = None

    @dataclass
    class SFTConfig(trl.SFTConfig):
        benchmarks: list[str] = field(default_factory=list)
        callbacks: list[str] = field(default_factory=list)
        chat_template: Optional[str] = None
        system_prompt: Optional[str] = None
        hub_model_revision: Optional[str] = "main"
        overwrite_hub_revision: bool = False
        push_to_hub_revision: bool = False
        wandb_entity: Optional[str] = None
        wandb_project: Optional[str] = None
        wandb_run_group: Optional[str] = None

    return ScriptArguments, SFTConfig, trl.ModelConfig


def trl_parse(recipe_path: Path, tmp_path: Path):
    """(script, training, model) arguments TRL's TrlParser builds from the modernised recipe, with open-r1's
    classes (which add fields to TRL's and change none)."""
    from trl import TrlParser

    data = modernised(yaml.safe_load(recipe_path.read_text()))
    path = tmp_path / recipe_path.name
    path.write_text(yaml.safe_dump(data))
    parser = TrlParser(open_r1_classes())
    return parser.parse_args_and_config(["--config", str(path)])


def imported_experiment(recipe_path: Path, conf_dir: Path, accelerate: Path | None = None):
    """Import the recipe as a user would (the module's function), into conf_dir/experiment/."""
    from sft_exp.recipe_import.cli import import_recipe, write

    imported = import_recipe(recipe_path, accelerate, str(conf_dir / "experiment" / f"{recipe_path.stem}.yaml"))
    write(imported)
    return imported


def compose_experiment(conf_dir: Path, name: str, overrides=()):
    """The config `python -m sft_exp --config-dir conf_dir experiment=name` runs, composed in-process, and the
    run folder Hydra would use (hydra.run.dir)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import sft_exp.config  # noqa: F401
    from sft_exp.paths import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[f"hydra.searchpath=[file://{conf_dir}]", f"experiment={name}", *overrides],
            return_hydra_config=True,
        )
    run_dir = cfg.hydra.run.dir
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="sft_exp_recipe_")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir
