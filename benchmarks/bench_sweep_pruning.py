"""What pruning saves: the same 8-trial study of sweeps/optuna_task.yaml (TPE, seed 42, maximizing the
demo's held-out exact match) with its pruner (successive halving, first rung at the first evaluation) and without
one, side by side.

Both studies run at once, each a `python -m sft_exp -m` process on one thread (OMP_NUM_THREADS=1), so the
load of the machine hits both alike; the wall time of each and both best values are printed.

    python benchmarks/bench_sweep_pruning.py [--trials 8] [--steps 600] [--eval-steps 150] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def command(sweep_dir: Path, args, pruner: bool) -> list:
    return [
        sys.executable,
        "-m",
        "sft_exp",
        "-m",
        "--config-dir",
        str(REPO / "sweeps"),
        "--config-name",
        "optuna_task",
        f"hydra.sweeper.n_trials={args.trials}",
        f"trainer.max_steps={args.steps}",
        f"trainer.eval_steps={args.eval_steps}",
        f"trainer.save_steps={args.steps}",
        "trainer.logging_steps=50",
        f"hydra.sweeper.pruner.min_resource={args.eval_steps}",
        f"evals.heldout.limit={args.prompts}",
        "logger=none",
        f"hydra.sweep.dir={sweep_dir}",
        *([] if pruner else ["hydra.sweeper.pruner=null"]),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-steps", type=int, default=300)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_sweep_pruning_"))
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    print(f"load before: {os.getloadavg()}", flush=True)
    started, procs = time.monotonic(), {}
    for name, pruner in (("pruned", True), ("unpruned", False)):
        log = (out / f"{name}.log").open("w")
        procs[name] = subprocess.Popen(
            command(out / name, args, pruner), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    wall = {}
    while len(wall) < len(procs):
        for name, proc in procs.items():
            if name not in wall and proc.poll() is not None:
                wall[name] = time.monotonic() - started
                if proc.returncode:
                    print(f"{name} failed ({proc.returncode}); see {out / name}.log")
                    return 1
        time.sleep(1)
    print(f"load after: {os.getloadavg()}")
    from omegaconf import OmegaConf

    print(f"\n{args.trials} trials x {args.steps} steps, eval every {args.eval_steps}; folders under {out}")
    print("| study | wall s | ratio | trials | best exact match | best trial |\n|---|---|---|---|---|---|")
    for name in procs:
        result = OmegaConf.load(out / name / "optimization_results.yaml")
        print(
            f"| {name} | {wall[name]:.0f} | {wall[name] / wall['unpruned']:.2f} | {dict(result.trials)} | "
            f"{result.get('best_value')} | {result.get('best_trial')} |"
        )
    print("\n| study | steps trained | trials (number: status at step, exact match) |\n|---|---|---|")
    for name in procs:
        ends = [
            _trial_end(job)
            for job in sorted((p for p in (out / name).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        ]
        print(
            f"| {name} | {sum(step for _, step, _ in ends)} | "
            + ", ".join(f"{i}: {status} at {step}, {score}" for i, (status, step, score) in enumerate(ends))
            + " |"
        )
    return 0


def _trial_end(job: Path) -> tuple:
    """(status, last step, last objective value) of one job folder, from its summary.json."""
    import json

    summary = json.loads((job / "summary.json").read_text())
    score = summary.get("eval_heldout/exact_match")
    return summary.get("status"), summary.get("global_step", 0), None if score is None else round(score, 3)


if __name__ == "__main__":
    sys.exit(main())
