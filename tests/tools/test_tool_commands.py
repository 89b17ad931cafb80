"""Every tool is a subcommand (`python -m sft_exp report ...`, `sft-exp report ...`) and keeps its module name
(`python -m sft_exp.report`); each starts as training does: thread count chosen, user errors exit 2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from sft_exp.tools import TOOLS
from tests.helpers import REPO


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_a_tool_runs_as_a_subcommand_and_by_its_module_name(tool):
    for command in (["-m", "sft_exp", tool, "--help"], ["-m", f"sft_exp.{tool}", "--help"]):
        done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout, (command, done.stderr[-1500:])


def test_a_tool_sizes_its_cpu_threads_before_torch_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = (
        "import os, sys; from sft_exp.tools import run_tool; code = run_tool('report', [sys.argv[1]]); "
        "print(code, os.environ.get('OMP_NUM_THREADS'), 'torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "no_such_run")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    exit_code, threads, torch_loaded = done.stdout.split()
    assert exit_code == "2" and int(threads) >= 1, done.stderr[-1500:]  # a user error, after the thread policy
    assert torch_loaded == "False"  # a report reads files: no torch


@pytest.mark.skipif(shutil.which("sft-exp") is None, reason="the sft-exp console script is not installed")
def test_the_console_script_reports_a_mistyped_key_as_the_module_does():
    done = subprocess.run(["sft-exp", "trainer.max_stpes=3"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr[-1500:]
    assert "did you mean `max_steps`" in done.stderr and "Traceback" not in done.stderr
