"""An engine loads only where it is used (issue 34): a run, report, evaluation or export that uses neither
DeepSpeed (distributed=deepspeed) nor bitsandbytes (peft=qlora) never imports them: seconds of import each, and
bitsandbytes' CPU warnings. Each command runs in a fresh process, as a user runs it; sys.modules is read at exit."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, SAMPLE_GENERATIONS, TEST_ENV

ENGINES = ("deepspeed", "bitsandbytes")
# `python -m <module> <args>`, then the engines in sys.modules as the process exits.
AT_EXIT = (
    "import atexit, json, runpy, sys\n"
    f"atexit.register(lambda: print('engines loaded:', json.dumps([m for m in {ENGINES!r} if m in sys.modules])))\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)
TINY = [
    "trainer.max_steps=2",
    "trainer.logging_steps=1",
    "trainer.save_steps=2",
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=8",
    "data.sources.0.max_samples=16",
    "data.sources.0.eval_max_samples=8",
    "data.max_length=64",
    "logger=none",
]


def engines_loaded(module: str, *args: str) -> list:
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT, module, *args],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    said = [line for line in done.stdout.splitlines() if line.startswith("engines loaded:")]
    assert said, done.stdout[-2000:]
    return json.loads(said[-1].partition(":")[2])


def test_a_default_run_and_its_report_load_neither_deepspeed_nor_bitsandbytes(tmp_path):
    run_dir = tmp_path / "run"
    assert engines_loaded("sft_exp", *TINY, *SAMPLE_GENERATIONS, f"hydra.run.dir={run_dir}") == []
    assert (run_dir / "summary.json").is_file()
    assert engines_loaded("sft_exp.report", str(run_dir)) == []


def test_a_lora_run_and_its_merge_load_no_bitsandbytes(tmp_path):
    run_dir = tmp_path / "run"
    # peft creates each LoRA layer after asking for bitsandbytes; the merge loads the adapter the same way.
    assert engines_loaded("sft_exp", *TINY, "evals=none", "peft=lora", f"hydra.run.dir={run_dir}") == []
    assert engines_loaded("sft_exp.export", str(run_dir), "--merge", "--no-check") == []
    assert (run_dir / "merged" / "config.json").is_file()
