"""What changed between two evaluations of a run: the examples whose score moved (for the report)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Tuple

from sft_exp.atomic import read_jsonl
from sft_exp.evaluation.runner import prompt_text

STEP_FILE = re.compile(r"step-(\d+)\.jsonl$")


def evaluation_files(run: Path) -> Dict[str, List[Tuple[int, Path]]]:
    """Task name -> [(step, file)] in step order, from <run>/evals/<task>/step-<N>.jsonl."""
    tasks = {}
    root = Path(run) / "evals"
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        files = [(int(m.group(1)), f) for f in folder.iterdir() if (m := STEP_FILE.search(f.name))]
        if files:
            tasks[folder.name] = sorted(files)
    return tasks


def _rows(path: Path) -> Dict[int, dict]:
    return {row["index"]: row for row in read_jsonl(path)}


def changed_examples(run: Path) -> Dict[str, dict]:
    """Per task: the first and last evaluated steps and the examples whose score differs between them."""
    result = {}
    for task, files in evaluation_files(run).items():
        (first_step, first), (last_step, last) = files[0], files[-1]
        before, after = _rows(first), _rows(last)
        changed = [
            (before[i], after[i]) for i in sorted(before) if i in after and before[i]["score"] != after[i]["score"]
        ]
        result[task] = {
            "first_step": first_step,
            "last_step": last_step,
            "examples": len(after),
            "mean_before": _mean(before),
            "mean_after": _mean(after),
            "changed": changed,
        }
    return result


def _mean(rows: Dict[int, dict]) -> float:
    return sum(r["score"] for r in rows.values()) / len(rows) if rows else float("nan")


def _quote(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else "(empty)"


def changed_markdown(run: Path, limit: int = 20) -> str:
    """A section per task: the examples whose score changed between the first and the last evaluation."""
    sections = []
    for task, info in changed_examples(run).items():
        changed = info["changed"]
        title = (
            f"### {task}: step {info['first_step']} -> {info['last_step']}, mean score "
            f"{info['mean_before']:.4g} -> {info['mean_after']:.4g}; {len(changed)} of {info['examples']} "
            "examples changed score"
        )
        if info["first_step"] == info["last_step"]:
            sections.append(f"### {task}: evaluated once (step {info['first_step']}), nothing to compare")
            continue
        lines = [title]
        if changed:
            lines += ["", "| # | prompt | reference | before | after |", "|---|---|---|---|---|"]
            for old, new in changed[:limit]:
                lines.append(
                    f"| {new['index']} | {_quote(prompt_text(new['prompt']))} | {_quote(new['reference'], 60)} | "
                    f"{old['score']:.3g}: {_quote(old['output'], 80)} | {new['score']:.3g}: {_quote(new['output'], 80)} |"
                )
            if len(changed) > limit:
                lines.append(
                    f"\n({len(changed) - limit} more changed examples not shown; all are in "
                    f"evals/{task}/step-{info['first_step']}.jsonl and step-{info['last_step']}.jsonl)"
                )
        sections.append("\n".join(lines))
    return "\n\n".join(sections)
