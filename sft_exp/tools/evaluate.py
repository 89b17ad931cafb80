"""`python -m sft_exp.evaluate <run folder | model folder | file.gguf> [overrides]`: score tasks on a saved model.

No training: the tasks of `evals` run on the model as saved, and each example's output and score
go to <out>/<task>/step-<N>.jsonl (N: the run's last step, else 0) with the scores in scores.json.

  python -m sft_exp.evaluate outputs/runs/2026-11-29/15-00-00                # the run's own tasks
  python -m sft_exp.evaluate outputs/runs/.../run evals=gsm8k evals.gsm8k.path=/data/gsm8k_test.jsonl
  python -m sft_exp.evaluate /models/SmolLM2-135M-Instruct.Q4_1.gguf evals=gsm8k evals.gsm8k.path=... \\
      evals.gsm8k.limit=100

A run folder gives the model (<run>/model, a full model or a LoRA adapter), its tokenizer and chat
template, its tasks and its held-out rows. `evals=<option>[,...]` picks tasks from conf/evals instead;
`evals.<task>.<key>=value` changes one setting. An adapter's base is its adapter_config's
base_model_name_or_path, else the run's base_model/ folder. Only tasks run here: an entry of `evals` with a
`_target_` (an evaluator of your own) is left out, named in the log.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional

from sft_exp.atomic import read_jsonl
from sft_exp.errors import ConfigError, UserError
from sft_exp.tools.saved_run import SavedRun, load_saved_model

log = logging.getLogger("sft_exp.tools.evaluate")


def find_model(target: Path) -> tuple:
    """(run folder or None, model folder or .gguf file) of what the user named."""
    if not target.exists():
        raise UserError(f"{target}: no such file or folder; give a run folder, a model folder or a .gguf file")
    if target.is_file():
        if target.suffix != ".gguf":
            raise UserError(f"{target}: a file must be a .gguf model; otherwise give a folder")
        return None, target
    if SavedRun.is_run(target):
        run = SavedRun(target)
        if not run.model_dir.is_dir():
            raise UserError(f"{target} is a run folder without a saved model (model/); did the run finish?")
        return run, run.model_dir
    if (target / "config.json").is_file() or (target / "adapter_config.json").is_file():
        return (SavedRun(target.parent) if SavedRun.is_run(target.parent) else None), target
    raise UserError(
        f"{target}: neither a run folder (resolved_config.yaml) nor a model folder (config.json or adapter_config.json)"
    )


def task_config(run: Optional[SavedRun], overrides: list) -> dict:
    """The tasks to run: the run's `evals`, or the conf/evals options named by `evals=...`; plus overrides."""
    from omegaconf import OmegaConf

    bad = [o for o in overrides if not (o.startswith("evals=") or o.startswith("evals.") or o.startswith("+evals."))]
    if bad:
        raise ConfigError(f"only task overrides (evals=..., evals.<task>.<key>=...) apply here, not {bad}")
    selection = [o for o in overrides if o.startswith("evals=")]
    settings = [o for o in overrides if o not in selection]
    if selection:
        from sft_exp.cli_errors import composed

        # Task keys merge onto the chosen options unchecked here: build_tasks checks them against the task
        # schema (a documented key such as format=messages works; a misspelled one gets "did you mean").
        cfg = composed(["+" + selection[-1]], config_name=None)
        dotlist = [o.lstrip("+").split(".", 1)[1] for o in settings]
        evals = OmegaConf.merge(
            OmegaConf.create(OmegaConf.to_container(cfg.get("evals") or {})), OmegaConf.from_dotlist(dotlist)
        )
        return _tasks_alone(evals)
    if run is None:
        raise ConfigError("a model folder has no tasks of its own: choose some, e.g. evals=gsm8k evals.gsm8k.path=...")
    evals = run.config.get("evals") or OmegaConf.create({})
    evals = OmegaConf.merge(evals, OmegaConf.from_dotlist([o.lstrip("+").split(".", 1)[1] for o in settings]))
    tasks = _tasks_alone(evals)
    if not tasks:
        raise ConfigError(f"{run.path} ran without task evaluation (evals=none); choose tasks, e.g. evals=heldout")
    return tasks


def _tasks_alone(evals) -> dict:
    """The tasks of an `evals` config; its evaluators of your own (a `_target_`) are left out, named in the log."""
    from sft_exp.evaluation.evaluator import split_evals

    tasks, own = split_evals(evals)
    if own:
        log.info("not run here (evaluators of your own, not tasks): %s", ", ".join(f"evals.{name}" for name in own))
    return tasks


def evaluate_saved(
    target: Path, overrides: list, out: Optional[Path] = None, print_examples: int = 4, run: Optional[Path] = None
) -> dict:
    """`run`: the run whose tasks and held-out rows score `target` (default: the run folder `target` is in)."""
    from sft_exp.evaluation import TaskEvaluation
    from sft_exp.evaluation.evaluator import HELDOUT_FILE
    from sft_exp.evaluation.tasks import HELDOUT

    found, model_path = find_model(target)
    run = SavedRun(run) if run is not None else found
    tasks = task_config(run, overrides)
    out = out or (run.path / "evaluate" if run is not None else Path("outputs") / "evaluate" / model_path.stem)
    evaluation = TaskEvaluation(tasks, output_dir=str(out), print_examples=print_examples)
    if any(isinstance(t, dict) and t.get("path") == HELDOUT for t in tasks.values()):
        heldout_file = run.path / "evals" / HELDOUT_FILE if run is not None else None
        if heldout_file is None or not heldout_file.is_file():
            raise ConfigError(
                "path: heldout needs a run folder whose run saved its held-out rows "
                f"(evals/{HELDOUT_FILE}); give a prompts file instead"
            )
        evaluation.use_heldout(read_jsonl(heldout_file))
    summary = run.read_json("summary.json") if run is not None else {}
    model, tokenizer = load_saved_model(model_path, run)
    scores = evaluation.evaluate(model, tokenizer, step=int(summary.get("global_step") or 0), final=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(scores, indent=2) + "\n")
    return {"scores": scores, "out": out}


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sft_exp.evaluate",
        description=__doc__.split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("target", type=Path, help="a run folder, a model folder (full or adapter) or a .gguf file")
    parser.add_argument("overrides", nargs="*", help="evals=<option>[,...] and evals.<task>.<key>=value")
    parser.add_argument("--out", type=Path, default=None, help="where the jsonl files go (default: <run>/evaluate)")
    parser.add_argument("--print-examples", type=int, default=4, help="examples printed per task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        result = evaluate_saved(args.target, args.overrides, args.out, args.print_examples)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key, value in result["scores"].items():
        from sft_exp.run.recorder import format_score

        print(f"{key}: {format_score(key, value)}")
    print(f"per-example outputs and scores.json in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
