"""Docs that cannot drift: every `python -m sft_exp ...` command the README and docs/ show composes, every
tool answers --help, and the quickstart commands that finish in seconds run.

A renamed key or group option breaks this test, not a user following the docs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, OverrideType

import sft_exp.config  # noqa: F401  registers the schemas, as `python -m sft_exp` does
from sft_exp.paths import config_dir
from tests.docs.commands import REPO, doc_commands, inline_commands

COMMANDS = doc_commands() + inline_commands()
TRAIN_COMMANDS = [c for c in COMMANDS if c.module == "sft_exp"]
PREFIX = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~", OverrideType.CHANGE: ""}


def composable(args: list[str]) -> tuple[str, list[str], list[str]]:
    """(config name, extra search path, overrides) of a command line; a sweep override keeps its first value."""
    name, search, overrides, rest = "config", [], [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-m", "--multirun"):
            continue
        if arg in ("--cfg", "-c"):
            rest.pop(0)
        elif arg == "--config-name":
            name = rest.pop(0)
        elif arg == "--config-dir":
            search.append(str((REPO / rest.pop(0)).resolve()))
        elif arg in ("--help", "-h", "--hydra-help", "--info"):
            continue
        else:
            overrides.append(arg)
    return name, search, [_first_value(o) for o in overrides]


def _first_value(override: str) -> str:
    parsed = OverridesParser.create().parse_overrides([override])[0]
    if not parsed.is_sweep_override():
        return override
    value = parsed.value()
    first = value.start if isinstance(value, IntervalSweep) else next(parsed.sweep_string_iterator())
    return f"{PREFIX[parsed.type]}{parsed.get_key_element()}={first}"


def test_the_docs_show_commands_for_every_page():
    pages = {c.where.split(":")[0] for c in COMMANDS}
    assert {"README.md", "docs/data.md", "docs/sweeps.md", "docs/distributed.md"} <= pages, pages


@pytest.fixture(scope="module")
def documented_imports():
    """The docs' recipe imports (in code blocks) run first, about a second each: the commands after them use
    what they write."""
    for command in doc_commands():
        if command.module == "sft_exp.import_recipe" and "--help" not in command.args:
            done = subprocess.run(
                [sys.executable, *command.argv[1:]], capture_output=True, text=True, cwd=REPO, timeout=120
            )
            assert done.returncode == 0, f"{command.where}: {done.stdout[-1500:]}{done.stderr[-1500:]}"


@pytest.mark.parametrize("command", TRAIN_COMMANDS, ids=lambda c: c.where)
def test_every_documented_training_command_composes(command, documented_imports):
    name, search, overrides = composable(command.args)
    primary = str(config_dir())
    for folder in search:  # --config-dir: one more folder on Hydra's search path
        if (Path(folder) / f"{name}.yaml").is_file():  # it holds the primary config (a sweep YAML)
            primary, folder = folder, str(config_dir())
        overrides.append(f"hydra.searchpath=[file://{folder}]")
    GlobalHydra.instance().clear()
    with initialize_config_dir(primary, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    assert "trainer" in cfg and "model" in cfg, f"{command.where}: {' '.join(command.argv)}"


TOOLS = sorted({c.module for c in COMMANDS if c.module != "sft_exp"})


@pytest.mark.parametrize("tool", TOOLS)
def test_every_documented_tool_answers_help(tool):
    done = subprocess.run([sys.executable, "-m", tool, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, f"python -m {tool} --help: {done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower(), done.stdout[:500]


@pytest.mark.parametrize("args", [["--cfg", "job"], ["--help"]])
def test_the_quickstart_commands_that_finish_in_seconds_run(args):
    done = subprocess.run(
        [sys.executable, "-m", "sft_exp", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trainer" in done.stdout
