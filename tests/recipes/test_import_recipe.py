"""`python -m sft_exp.import_recipe` as a user runs it: one command per recipe from their own folder, the table,
the experiment file, the printed command; and every bad input as one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from tests.helpers import TEST_ENV
from tests.recipes.recipes import ACCELERATE, RECIPES, RECIPES_DIR, compose_experiment

DISTILL = RECIPES_DIR / "open-r1" / "OpenR1-Distill-7B__sft__config_distill.yaml"


def run_import(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sft_exp.import_recipe", *map(str, args)],
        cwd=cwd,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_recipe(tmp_path, name: str = "mine.yaml", **fields) -> str:
    recipe = {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "dataset_name": "trl-lib/Capybara", **fields}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


def test_every_recipe_imports_with_no_unmapped_field_and_its_command_runs_from_anywhere(tmp_path):
    user = tmp_path / "project"
    user.mkdir()
    commands = []
    for recipe in RECIPES:
        done = run_import(recipe, cwd=user)
        assert done.returncode == 0, done.stderr
        assert "SKIPPED" not in done.stdout and (user / "conf" / "experiment" / f"{recipe.stem}.yaml").is_file()
        assert done.stdout.splitlines()[2].split()[:2] == ["recipe", "field"]  # the table, after the summary line
        commands.append(done.stdout.strip().splitlines()[-1].split())
    assert commands[0][:3] == ["python", "-m", "sft_exp"] and commands[0][3:5] == ["--config-dir", str(user / "conf")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shown = subprocess.run(
        [sys.executable, *commands[0][1:], "--cfg", "job"],
        cwd=elsewhere,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert (
        yaml.safe_load(shown.stdout)["model"]["name_or_path"]
        == yaml.safe_load(RECIPES[0].read_text())["model_name_or_path"]
    )


def test_the_import_loads_neither_torch_nor_transformers(tmp_path):
    probe = (
        "import sys; from pathlib import Path; from sft_exp.recipe_import.cli import import_recipe, write; "
        f"write(import_recipe(Path({str(DISTILL)!r}), Path({str(ACCELERATE['zero3'])!r}))); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=TEST_ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_experiment_says_where_each_value_came_from(tmp_path):
    done = run_import(DISTILL, "--accelerate-config", ACCELERATE["zero3"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "conf" / "experiment" / f"{DISTILL.stem}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    assert "  - override /distributed: deepspeed  # accelerate: distributed_type\n" in text
    assert "  lr: 4.0e-05  # learning_rate\n" in text and "  eos_token: <|im_end|>  # eos_token\n" in text
    assert "  assistant_only_loss: false  # assistant_only_loss (TRL default)\n" in text
    assert (
        done.stdout.strip().splitlines()[-1].strip().startswith("torchrun --nproc_per_node 8 -m sft_exp --config-dir ")
    )
    table = done.stdout
    assert "assistant_only_loss (TRL default)" in table and "torch_dtype (now dtype)" in table
    assert "* the run folder: checkpoints in <dir>/checkpoints" in table  # a difference, marked


def test_env_block_and_text_with_interpolation_syntax_arrive_as_they_are(tmp_path):
    recipe = write_recipe(tmp_path, env={"OMP_NUM_THREADS": 1}, system_prompt="cost: ${price}", benchmarks=["gpqa"])
    assert run_import(recipe, cwd=tmp_path).returncode == 0
    cfg, _ = compose_experiment(tmp_path / "conf", "mine")
    assert cfg.evals.gpqa.lm_eval_args.system_instruction == "cost: ${price}"
    hydra = yaml.safe_load((tmp_path / "conf" / "experiment" / "mine.yaml").read_text())["hydra"]
    assert hydra == {"job": {"env_set": {"OMP_NUM_THREADS": "1"}}}


# ----------------------------------------------------------------------------- bad input: one line, exit 2
def _one_line_error(done) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("kind, text", [
    ("Hydra", "defaults:\n  - model: tiny\noptimizer:\n  lr: 1e-3\n"),
    ("axolotl", "base_model: Qwen/Qwen2.5-0.5B\ndatasets:\n  - path: mhenrichsen/alpaca_2k_test\n    type: alpaca\n"
                "sequence_len: 2048\nmicro_batch_size: 2\nlearning_rate: 0.0002\n"),
    ("accelerate", "distributed_type: MULTI_GPU\nnum_processes: 8\n"),
    ("not a recipe", "learning_rate: 0.001\n"),
])  # fmt: skip
def test_a_file_that_is_not_a_recipe_says_which_formats_are_read(tmp_path, kind, text):
    path = tmp_path / "other.yaml"
    path.write_text(text)
    line = _one_line_error(run_import(path, cwd=tmp_path))
    assert "this reads TRL CLI configs" in line and "open-r1 SFT recipes" in line and not (tmp_path / "conf").exists()
    assert {
        "Hydra": "a Hydra config",
        "axolotl": "an axolotl config",
        "accelerate": "--accelerate-config",
        "not a recipe": "names no model or data",
    }[kind] in line


def test_an_accelerate_config_whose_world_size_disagrees_with_the_batch_settings_is_named(tmp_path):
    accelerate = yaml.safe_load(ACCELERATE["zero3"].read_text())
    accelerate["deepspeed_config"]["gradient_accumulation_steps"] = 4
    path = tmp_path / "zero3.yaml"
    path.write_text(yaml.safe_dump(accelerate))
    line = _one_line_error(run_import(DISTILL, "--accelerate-config", path, cwd=tmp_path))
    assert (
        "deepspeed_config: gradient_accumulation_steps=4, but the recipe's per_device_train_batch_size 2 x "
        "gradient_accumulation_steps 8 x 8 processes" in line
    )
    accelerate = yaml.safe_load((RECIPES_DIR / "trl" / "accelerate_alst_ulysses_4gpu.yaml").read_text())
    accelerate["num_processes"] = 8
    path.write_text(yaml.safe_dump(accelerate))
    line = _one_line_error(run_import(DISTILL, "--accelerate-config", path, cwd=tmp_path))
    assert "dp_replicate x dp_shard x tp x cp x sp = 4, but num_processes is 8" in line


def test_mixed_precision_that_disagrees_with_the_recipe_is_named(tmp_path):
    accelerate = yaml.safe_load(ACCELERATE["ddp"].read_text()) | {"mixed_precision": "fp16"}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(accelerate))
    line = _one_line_error(run_import(DISTILL, "--accelerate-config", path, cwd=tmp_path))
    assert "mixed_precision 'fp16' disagrees with the recipe's bf16=True" in line


def test_two_fields_that_say_different_things_are_named(tmp_path):
    accelerate = yaml.safe_load(ACCELERATE["fsdp"].read_text())
    accelerate["fsdp_config"]["fsdp_activation_checkpointing"] = True
    path = tmp_path / "fsdp.yaml"
    path.write_text(yaml.safe_dump(accelerate))
    line = _one_line_error(
        run_import(write_recipe(tmp_path, gradient_checkpointing=False), "--accelerate-config", path, cwd=tmp_path)
    )
    assert (
        "accelerate: fsdp_activation_checkpointing sets /memory='checkpointing', but gradient_checkpointing set it "
        "to 'none'"
    ) in line


def test_a_chat_template_that_does_not_parse_names_the_field_and_line(tmp_path):
    template = "{%- for message in messages %}\n{{- message['content'] }\n{%- endfor %}"
    line = _one_line_error(run_import(write_recipe(tmp_path, chat_template=template), cwd=tmp_path))
    assert "chat_template is not valid Jinja, line 2 of the template: unexpected '}'" in line


def test_a_field_with_no_sft_exp_form_stops_the_import_and_allow_unmapped_lists_it(tmp_path):
    recipe = write_recipe(tmp_path, optim="adafactor", learning_rat=1e-5)
    line = _one_line_error(run_import(recipe, cwd=tmp_path))
    assert "mine.yaml, line 2: learning_rat: not a field of TRL's ScriptArguments" in line and "(and 1 more)" in line
    assert not (tmp_path / "conf").exists()
    done = run_import(recipe, "--allow-unmapped", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    skipped = [line.split() for line in done.stdout.splitlines() if "SKIPPED (no sft_exp form)" in line]
    assert [words[0] for words in skipped] == ["learning_rat", "optim"]
    assert "# Skipped (--allow-unmapped): learning_rat, optim" in (tmp_path / "conf/experiment/mine.yaml").read_text()


def test_the_import_never_overwrites_a_file_it_did_not_write_nor_shadows_a_shipped_experiment(tmp_path):
    mine = tmp_path / "conf" / "experiment" / "mine.yaml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# @package _global_\n# my own\n")
    assert "was not written by an import" in _one_line_error(run_import(write_recipe(tmp_path), cwd=tmp_path))
    assert mine.read_text() == "# @package _global_\n# my own\n"
    assert "experiment sft_exp ships" in _one_line_error(
        run_import(write_recipe(tmp_path, "lora_tiny.yaml"), cwd=tmp_path)
    )
    assert "<config dir>/experiment/<name>.yaml" in _one_line_error(
        run_import(write_recipe(tmp_path), "-o", tmp_path / "x.yaml", cwd=tmp_path)
    )


# ----------------------------------------------------------------------------- what lands where
def test_an_open_r1_dataset_mixture_keeps_open_r1s_meaning(tmp_path):
    """Weights are fractions of each dataset's rows, the test split comes from the mixed rows, with the mixture's
    own seed (tests/data/test_data_open_r1_homes.py checks the rows are open-r1's own)."""
    from hydra.utils import instantiate

    mixture = {"datasets": [{"id": "org/a", "config": "all", "columns": ["messages"], "weight": 0.5},
                            {"id": "org/b", "split": "train", "columns": ["messages"], "weight": 0.3}],
               "seed": 0, "test_split_size": 0.1}  # fmt: skip
    recipe = tmp_path / "mix.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {"model_name_or_path": "m/m", "dataset_mixture": mixture, "eval_strategy": "steps", "eval_steps": 50}
        )
    )
    assert run_import(recipe, cwd=tmp_path).returncode == 0
    cfg, _ = compose_experiment(tmp_path / "conf", "mix")
    settings = instantiate(cfg.data)
    assert [(s.path, s.subset, s.split, s.weight, s.kept_columns) for s in settings.sources] == [
        ("org/a", "all", "train", 0.5, ["messages"]),
        ("org/b", None, "train", 0.3, ["messages"]),
    ]
    assert (settings.eval_split_from, settings.eval_split_size, settings.seed) == ("mixture", 0.1, 0)
    assert cfg.seed == 42 and cfg.trainer.eval_steps == 50


@pytest.mark.parametrize("config, expected", [
    ("zero3", {"strategy": "deepspeed", "training_args.deepspeed.zero_optimization.stage": 3}),
    ("fsdp", {"strategy": "fsdp", "training_args.fsdp_config.reshard_after_forward": True,
              "training_args.fsdp_config.version": 2}),
    ("ddp", {"strategy": "ddp"}),
])  # fmt: skip
def test_accelerate_configs_land_in_the_distributed_group(tmp_path, config, expected):
    done = run_import(DISTILL, "--accelerate-config", ACCELERATE[config], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].strip().startswith("torchrun --nproc_per_node 8 -m sft_exp")
    cfg, _ = compose_experiment(tmp_path / "conf", DISTILL.stem)
    assert {key: OmegaConf.select(cfg.distributed, key) for key in expected} == expected
    assert cfg.trainer.precision == "bf16"


@pytest.mark.parametrize("field, value, says", [
    ("logging_steps", 0.5, "logging_steps: sft_exp refuses the imported value: "),  # TRL's ratio; sft_exp: steps
    ("prediction_loss_only", True, "prediction_loss_only: sft_exp refuses the imported value: trainer.extra_args."),
])  # fmt: skip
def test_a_value_sft_exp_refuses_names_the_recipe_field_and_leaves_no_file(tmp_path, field, value, says):
    line = _one_line_error(run_import(write_recipe(tmp_path, **{field: value}), cwd=tmp_path))
    assert f"mine.yaml: {says}" in line and not list((tmp_path / "conf" / "experiment").glob("*.yaml"))
