"""`python -m sft_exp.reproduce <run folder> [--verify] [overrides]`: run a saved run again.

The run folder's resolved_config.yaml (every value resolved) becomes the primary config of a new
`python -m sft_exp` run, in a new run folder (outputs/runs/<date>/<time>, or hydra.run.dir=...).
Overrides are Hydra value overrides (trainer.max_steps=20); group choices (loss=dft) need the
original defaults list, so re-run `python -m sft_exp` with .hydra/overrides.yaml for those.

--verify compares the new metrics.jsonl to the old one row by row (wall-clock fields such as
runtimes and samples/s excluded) and the final weights, and lists what differs in run_info.json
(package versions, git commit, dirty tree, data fingerprint, device). Exit status 1 when the
metrics or weights differ.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_json, read_jsonl
from sft_exp.errors import UserError

WALL_CLOCK = re.compile(r"runtime|per_second|_per_s$|_time(_s)?$|timestamp")  # differ run to run by nature
GROUPS = ("model", "data", "optimizer", "loss", "memory", "peft", "logger", "trainer", "distributed", "experiment")
RUN_INFO_KEYS = ("git.commit", "git.dirty", "data_fingerprint", "device", "host", "platform", "seed")


def load_run_config(run: Path) -> dict:
    """The resolved config of a run folder, ready to run fresh (no resume, no fixed run_dir)."""
    from omegaconf import OmegaConf

    from sft_exp.tools.saved_run import SavedRun

    config = OmegaConf.to_container(SavedRun.open(run).config, resolve=False)
    _evaluators_into_evals(config)
    old_run_dir = config.pop("run_dir", None)  # the new run writes to its own folder
    config["resume_from_checkpoint"] = None  # a reproduction starts from step 0
    for callback in (config.get("callbacks") or {}).values():
        if isinstance(callback, dict) and "resume" in callback:
            callback["resume"] = "${resume_from_checkpoint}"
    return _relocate(config, str(old_run_dir)) if old_run_dir else config


def _evaluators_into_evals(config: dict) -> None:
    """A run saved while `evaluators` was a group of its own (its task_evaluation scored `evals`; evaluators=none
    scored nothing): the same evaluations in `evals`, where evaluators of your own are entries with a `_target_`."""
    if "evaluators" not in config:
        return
    evaluators = {name: spec for name, spec in (config.pop("evaluators") or {}).items() if spec is not None}
    scored_tasks = any(spec.get("_target_") == "sft_exp.evaluation.TaskEvaluation" for spec in evaluators.values())
    own = {
        name: spec for name, spec in evaluators.items() if spec.get("_target_") != "sft_exp.evaluation.TaskEvaluation"
    }
    config["evals"] = {**((config.get("evals") or {}) if scored_tasks else {}), **own}


def _relocate(value, old_run_dir: str):
    """Paths inside the old run folder (resolved from ${run_dir}: the recorder's, evals/) point into the new one."""
    if isinstance(value, dict):
        return {k: _relocate(v, old_run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocate(v, old_run_dir) for v in value]
    if isinstance(value, str) and (value == old_run_dir or value.startswith(old_run_dir.rstrip("/") + "/")):
        return "${run_dir}" + value[len(old_run_dir.rstrip("/")) :]
    return value


def check_overrides(overrides: list) -> None:
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and key in GROUPS:
            raise UserError(
                f"{override}: reproduce takes value overrides (e.g. optimizer.lr=1e-4), not group choices: the "
                "saved config has every group already resolved. To change a group, run `python -m sft_exp` with "
                "the run's .hydra/overrides.yaml plus your change."
            )


def launch(config: dict, new_run: Path, overrides: list) -> int:
    """Run `python -m sft_exp` with the saved config as its primary config; returns its exit status."""
    from omegaconf import OmegaConf

    with tempfile.TemporaryDirectory(prefix="sft_exp_reproduce_") as config_dir:
        primary = {"defaults": ["sft_config", {"hydra": "default"}, "_self_"], **config}
        OmegaConf.save(OmegaConf.create(primary), Path(config_dir) / "reproduce.yaml")
        command = [
            sys.executable,
            "-m",
            "sft_exp",
            "--config-dir",
            config_dir,
            "--config-name",
            "reproduce",
            f"hydra.run.dir={new_run}",
            *overrides,
        ]
        print("running:", " ".join(command), flush=True)
        return subprocess.run(command).returncode


def compare_metrics(old_rows: list, new_rows: list, limit: int = 10) -> list:
    """Differences between two metrics.jsonl files, wall-clock fields excluded."""

    def comparable(row: dict) -> dict:
        return {k: v for k, v in row.items() if not WALL_CLOCK.search(k)}

    problems = []
    if len(old_rows) != len(new_rows):
        problems.append(f"{len(old_rows)} rows before, {len(new_rows)} now")
    for i, (old, new) in enumerate(zip(old_rows, new_rows)):
        old, new = comparable(old), comparable(new)
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                problems.append(
                    f"row {i + 1} (step {old.get('step')}): {key} was {old.get(key)!r}, now {new.get(key)!r}"
                )
    return problems[:limit] + ([f"... and {len(problems) - limit} more"] if len(problems) > limit else [])


def compare_weights(old_run: Path, new_run: Path) -> Optional[str]:
    """None when the final model/ weights are byte-identical, else what differs (a missing model/ is a difference)."""

    def digests(run: Path) -> dict:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((run / "model").glob("*.safetensors"))
        }

    old, new = digests(old_run), digests(new_run)
    missing = [f"{run}/model" for run, found in ((old_run, old), (new_run, new)) if not found]
    if missing:
        return f"final weights cannot be compared: no *.safetensors in {' or '.join(missing)}"
    return (
        None
        if old == new
        else "final weights in model/ differ: "
        + ", ".join(name for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name))
    )


def compare_run_info(old_run: Path, new_run: Path) -> list:
    """What differs in run_info.json: package versions, git commit and dirty flag, data fingerprint, machine."""
    old, new = read_json(old_run / "run_info.json"), read_json(new_run / "run_info.json")
    notes = []
    for package in sorted(set(old.get("versions", {})) | set(new.get("versions", {}))):
        a, b = old.get("versions", {}).get(package), new.get("versions", {}).get(package)
        if a != b:
            notes.append(f"{package}: {a} -> {b}")
    for key in RUN_INFO_KEYS:
        a, b = _get(old, key), _get(new, key)
        if a != b:
            notes.append(f"{key}: {a} -> {b}" + (" (the training data changed)" if key == "data_fingerprint" else ""))
    return notes


def _get(info: dict, dotted: str):
    for part in dotted.split("."):
        info = info.get(part) if isinstance(info, dict) else None
    return info


def verify(old_run: Path, new_run: Path) -> bool:
    """Print the comparison; True when metrics and final weights are identical (both runs must have model/)."""
    problems = compare_metrics(read_jsonl(old_run / "metrics.jsonl"), read_jsonl(new_run / "metrics.jsonl"))
    weights = compare_weights(old_run, new_run)
    if weights:
        problems.append(weights)
    rows = len(read_jsonl(new_run / "metrics.jsonl"))
    print(f"\nverify {new_run} against {old_run}:")
    metric_problems = [p for p in problems if p != weights]
    print(
        f"  metrics.jsonl: identical ({rows} rows)"
        if not metric_problems
        else "  metrics.jsonl differs:\n    " + "\n    ".join(metric_problems)
    )
    print("  final weights: byte-identical" if weights is None else f"  {weights}")
    for resume in _changed_resumes(old_run):
        changes = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in resume["changed"].items())
        print(
            f"  {old_run} was resumed from {resume['from']} with changed settings ({changes}): "
            "a straight run of its last config may differ from it"
        )
    notes = compare_run_info(old_run, new_run)
    print(
        "  run_info.json: "
        + ("same versions, commit, data and machine" if not notes else "differs:\n    " + "\n    ".join(notes))
    )
    return not problems


def _changed_resumes(run: Path) -> list:
    return [resume for resume in read_json(run / "run_info.json").get("resumes", []) if resume.get("changed")]


def default_run_dir() -> Path:
    """outputs/runs/<date>/<time>, like a plain `python -m sft_exp` run (a suffix if that second is taken)."""
    base = Path("outputs/runs") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    candidate, n = base, 1
    while candidate.exists():
        candidate, n = base.with_name(f"{base.name}-{n}"), n + 1
    return candidate


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft_exp.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the run folder to reproduce")
    parser.add_argument("--verify", action="store_true", help="compare the new run's metrics and weights to the old")
    parser.add_argument("overrides", nargs="*", help="Hydra value overrides, e.g. trainer.max_steps=20")
    args = parser.parse_intermixed_args(argv)
    try:
        config = load_run_config(args.run)
        check_overrides(args.overrides)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    run_dirs = [o.split("=", 1)[1] for o in args.overrides if o.startswith("hydra.run.dir=")]
    new_run = Path(run_dirs[-1]) if run_dirs else default_run_dir()
    overrides = [o for o in args.overrides if not o.startswith("hydra.run.dir=")]
    status = launch(config, new_run, overrides)
    if status != 0:
        print(f"error: the reproduced run failed (exit status {status}); its log is in {new_run}", file=sys.stderr)
        return status
    print(f"reproduced {args.run} into {new_run}")
    if args.verify:
        return 0 if verify(args.run, new_run) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
