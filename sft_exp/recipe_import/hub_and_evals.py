"""Hub pushes (push_to_hub, hub_*, open-r1's push_to_hub_revision callback) and open-r1's benchmarks."""

from __future__ import annotations

from sft_exp.recipe_import.model_data import Unmapped, one
from sft_exp.recipe_import.rows import GROUP, Recipe, Row, Setting
from sft_exp.recipe_import.training import repo_name

# The callback that pushes to the Hub at each save (sft_exp.run.hub_push).
PUSH_TO_HUB = "sft_exp.run.hub_push.PushToHub"
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
# open-r1's benchmarks (open_r1/utils/evaluation.py, lighteval tasks) -> the lm-evaluation-harness task that
# measures the same thing (generative, zero-shot, through the chat template).
BENCHMARKS = {
    "gpqa": "gpqa_diamond_cot_zeroshot",
    "aime24": "aime24",
    "aime25": "aime25",
    "math_500": "minerva_math500",
}
OPEN_R1_BENCHMARKS = ("math_500", "aime24", "aime25", "gpqa", "lcb", "lcb_v4")


def _push(name: str, r: Recipe, **fields) -> list[Setting]:
    values = {
        "_target_": PUSH_TO_HUB,
        "repo_id": repo_name(r),
        "strategy": r.get("hub_strategy", "every_save"),
        "private": bool(r.get("hub_private_repo")),
        **fields,
    }
    if r.get("hub_model_revision") is not None:  # open-r1's branch
        values.setdefault("revision", r.get("hub_model_revision"))
    return [Setting(f"callbacks.{name}.{key}", value) for key, value in values.items()]


def push_to_hub(r: Recipe, value) -> Row:
    if not value:
        return Row("")
    strategy = r.get("hub_strategy", "every_save")
    if strategy not in HUB_STRATEGIES:
        raise Unmapped(f"hub_strategy {strategy!r}: one of {', '.join(HUB_STRATEGIES)}")
    return Row(
        "",
        _push("push_to_hub", r),
        note="a callback uploads at each save as hub_strategy says (TRL: the "
        "Trainer's own push); a failed upload is said, training goes on",
    )


def hub_field(key: str):
    """hub_model_id, hub_strategy, hub_private_repo: the push callback's fields; unread without push_to_hub."""

    def handler(r: Recipe, value) -> Row:
        if not r.get("push_to_hub"):
            return Row("", info="not read: push_to_hub is false")
        return one(f"callbacks.push_to_hub.{key}", bool(value) if key == "private" else value)

    return handler


def hub_model_revision(r: Recipe, value) -> Row:
    pushes = (["push_to_hub"] if r.get("push_to_hub") else []) + [
        c for c in r.get("callbacks") or [] if c == "push_to_hub_revision"
    ]
    if not pushes:
        return Row("", info="not read: nothing pushes")
    return Row("", [Setting(f"callbacks.{name}.revision", value) for name in pushes])


def hub_token(r: Recipe, value) -> Row:
    if value:
        raise Unmapped("hub_token: log in with `huggingface-cli login` or set HF_TOKEN instead of a token in a recipe")
    return Row("")


def callbacks(r: Recipe, value) -> Row:
    """open-r1's callbacks: push_to_hub_revision is the only one (open_r1/utils/callbacks.py)."""
    settings = []
    for name in value or []:
        if name != "push_to_hub_revision":
            raise Unmapped(f"callbacks: {name!r} is not one of open-r1's callbacks (push_to_hub_revision)")
        settings += _push("push_to_hub_revision", r, strategy="every_save")
    note = (
        (
            "open-r1 pushes each save to its own branch <hub_model_revision>-step-<N> and starts its benchmarks "
            "on SLURM; here each save is pushed to hub_model_revision"
        )
        if settings
        else ""
    )
    return Row("", settings, note)


def benchmarks(r: Recipe, value) -> Row:
    names = list(value or [])
    if names == ["all"]:
        names = list(OPEN_R1_BENCHMARKS)
    if not names:
        return Row("")
    settings = [Setting(f"{GROUP}evals", "none")]
    for name in names:
        if name not in BENCHMARKS:
            raise Unmapped(
                f"benchmarks: {name!r} has no lm-evaluation-harness task here (mapped: "
                f"{', '.join(BENCHMARKS)}); evaluate it apart with python -m sft_exp.evaluate"
            )
        settings += [
            Setting(f"evals.{name}.type", "lm_eval"),
            Setting(f"evals.{name}.lm_eval_tasks", [BENCHMARKS[name]]),
            Setting(f"evals.{name}.lm_eval_args.apply_chat_template", True),
        ]
    return Row(
        "",
        settings,
        note="open-r1 runs lighteval on each pushed checkpoint as SLURM jobs; sft_exp runs "
        "lm-eval's task in the run, before and after training and at each evaluation",
    )
