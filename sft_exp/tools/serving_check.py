"""Does an exported model serve as it was trained? Three checks, one table (`python -m sft_exp.export`).

1. the end-of-turn token was trained: its share of the run's supervised tokens (run_info.json) is > 0;
2. it stops generation: it is in the exported generation_config.json `eos_token_id`, which is what
   generate(), vLLM and llama.cpp's converter read;
3. the run's task evaluation, re-run on the exported folder (loaded with from_pretrained), gives the
   scores the run logged at its last step (identical for a merged full-precision model: merging is
   exact up to float rounding, and greedy decoding is deterministic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from sft_exp.atomic import read_json, read_jsonl


@dataclass
class Check:
    name: str
    expected: str
    got: str
    ok: bool


def _end_of_turn(run_dir: Path, folder: Path) -> dict:
    """What the run recorded about its end-of-turn token; found anew from the saved template for older runs."""
    recorded = (read_json(run_dir / "run_info.json").get("data_stats") or {}).get("end_of_turn")
    if recorded:
        return recorded
    from transformers import AutoTokenizer

    from sft_exp.models.stop_tokens import end_of_turn_token

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    end = end_of_turn_token(tokenizer.chat_template, tokenizer)
    return {"token": end[0] if end else None, "id": end[1] if end else None, "trained": None, "share": None}


def _same(logged, rerun) -> bool:
    if isinstance(logged, float) and isinstance(rerun, float) and math.isnan(logged) and math.isnan(rerun):
        return True
    return logged == rerun


def check_folder(run_dir: Path, folder: Path, scratch: Path) -> List[Check]:
    """Every check of `folder` (an exported model of the run `run_dir`); `scratch`: where the re-run writes."""
    run_dir, folder = Path(run_dir), Path(folder)
    checks = []
    end = _end_of_turn(run_dir, folder)
    token = end.get("token")
    if token is None:
        checks.append(
            Check("end of turn found", "a token after the assistant's content", "none in the template", False)
        )
    else:
        share = end.get("share")
        got = "not recorded (older run)" if share is None else f"{end['trained']} tokens, {100 * share:.2f}%"
        checks.append(Check(f"{token} trained", "> 0 of the supervised tokens", got, share is None or share > 0))
        stops = (read_json(folder / "generation_config.json")).get("eos_token_id")
        stops = stops if isinstance(stops, list) else [] if stops is None else [stops]
        checks.append(
            Check(
                f"{token} stops generation",
                f"id {end['id']} in generation_config eos_token_id",
                str(stops),
                end["id"] in stops,
            )
        )
    checks.extend(_task_scores(run_dir, folder, scratch))
    return checks


def _task_scores(run_dir: Path, folder: Path, scratch: Path) -> List[Check]:
    from omegaconf import OmegaConf

    from sft_exp.evaluation.evaluator import split_evals
    from sft_exp.tools.evaluate import evaluate_saved
    from sft_exp.tools.saved_run import SavedRun

    tasks, _ = split_evals(OmegaConf.select(SavedRun.open(run_dir).config, "evals"))  # evaluators of yours: not re-run
    if not tasks:
        return [Check("task scores", "the run's evals", "the run has none (evals=none): not re-run", True)]
    logged = read_json(run_dir / "summary.json")
    scores = evaluate_saved(folder, [], out=scratch, print_examples=0, run=run_dir)["scores"]
    checks = []
    for key, value in scores.items():
        if key not in logged:
            checks.append(Check(key, "a score the run logged", f"{value:.4g} (not in summary.json)", False))
            continue
        checks.append(
            Check(
                key,
                f"{logged[key]:.6g} (logged at step {logged.get('global_step', '?')})",
                f"{value:.6g}",
                _same(logged[key], value),
            )
        )
    return checks + _same_outputs(run_dir, scratch, logged.get("global_step"))


def _same_outputs(run_dir: Path, scratch: Path, step) -> List[Check]:
    """Per task, how many generations are the very text the run generated at its last step."""
    checks = []
    for rerun in sorted(Path(scratch).glob(f"*/step-{step}.jsonl")):
        logged = run_dir / "evals" / rerun.parent.name / rerun.name  # where the run's task evaluation wrote
        if not logged.is_file():
            continue
        before, after = ([row["output"] for row in read_jsonl(path)] for path in (logged, rerun))
        same = sum(a == b for a, b in zip(before, after))
        checks.append(
            Check(
                f"eval_{rerun.parent.name} outputs",
                f"{len(before)} identical to the run's",
                f"{same} of {len(after)} identical",
                same == len(before) == len(after),
            )
        )
    return checks


def table(checks: List[Check]) -> str:
    rows = [("check", "expected", "exported model", "")] + [
        (c.name, c.expected, c.got, "ok" if c.ok else "FAIL") for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def failures(checks: List[Check]) -> Optional[str]:
    """One sentence naming every check that failed, or None."""
    failed = [c for c in checks if not c.ok]
    if not failed:
        return None
    return "; ".join(f"{c.name}: expected {c.expected}, got {c.got}" for c in failed)
