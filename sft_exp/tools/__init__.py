"""The command-line tools beside training, one registry of them, and the one way they are started.

`python -m sft_exp <tool> ...` (or `sft-exp <tool> ...`) runs a tool; `python -m sft_exp.<tool>` is the same
command under its module name. Every tool starts through `run_tool`, so each one sizes its CPU threads as a
training run does (a tool that loads a model on a shared CPU otherwise spins as many threads as there are cores)
and imports only what it uses.
"""

from __future__ import annotations

import importlib

# name -> the module whose main(argv) runs it
TOOLS = {
    "evaluate": "sft_exp.tools.evaluate",  # score a saved model on the run's tasks (or any tasks)
    "export": "sft_exp.tools.export",  # merge an adapter, check the model serves as it trained, push
    "preview": "sft_exp.tools.preview",  # the rows a run would train on, no model loaded
    "report": "sft_exp.tools.report",  # a sweep's or runs' report: tables, CSVs, plots
    "reproduce": "sft_exp.tools.reproduce",  # re-run a run folder and compare
    "import_recipe": "sft_exp.recipe_import.cli",  # a TRL / open-r1 recipe as an experiment
}


def run_tool(name: str, argv: list[str] | None = None) -> int:
    """Run tool `name` with its arguments; returns its exit code."""
    from sft_exp import system

    system.prepare(None)  # before torch loads (a tool imports it lazily): OMP_NUM_THREADS, passive waiting
    return importlib.import_module(TOOLS[name]).main(argv)
