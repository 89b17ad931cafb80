"""Hydra's own errors (a misspelled key, a bad value, an unknown option) as sft_exp's user errors: one
message naming the key with "did you mean", no "use +key=..." advice that only moves the failure to
instantiate, and exit code 2 like every other user mistake in every command."""

from __future__ import annotations

import re
import sys

from sft_exp.errors import did_you_mean, unknown_key_message

# "Key 'max_stepz' not in 'TrainerConfig'" / "Key 'max_stepz' is not in struct", then "full_key: trainer.max_stepz"
_UNKNOWN_KEY = re.compile(r"Key '([^']+)' (?:is )?not in")
_FULL_KEY = re.compile(r"full_key: (\S+)")
_OBJECT_TYPE = re.compile(r"object_type=(\w+)")


def explain(error: BaseException, overrides: list[str] | None = None) -> str:
    """A readable one-paragraph message for an error Hydra raised while composing the config."""
    merged = next(
        filter(None, (merged_key_message(o.lstrip("+~").split("=", 1)[0], overrides or []) for o in overrides or [])),
        None,
    )
    if merged:  # evaluators=none: whatever Hydra says about a group that is gone, the answer is its new name
        return merged
    text = "\n".join(str(e) for e in (error, error.__cause__) if e is not None)
    split = split_by_the_shell(text, overrides or [])
    if split:
        return split
    unknown, full_key = _UNKNOWN_KEY.search(text), _FULL_KEY.search(text)
    if unknown:
        key = unknown.group(1)
        object_type = (_OBJECT_TYPE.search(text) or [None, ""])[1]
        if object_type.endswith("SourceSchema"):  # a key inside one data.sources / eval_sources entry
            import dataclasses

            from sft_exp.data.settings import Source

            return unknown_key_message(f"data.sources[].{key}", [f.name for f in dataclasses.fields(Source)])
        path = full_key.group(1) if full_key else key
        moved = moved_key(path, overrides or [])
        if moved:
            return moved
        known, free_form = _keys_beside(path, overrides or [])
        if free_form:  # a dict of any keys (trainer.extra_args, model.load_kwargs): Hydra adds new ones with `+`
            value = next((o.split("=", 1)[1] for o in overrides or [] if o.split("=", 1)[0] == path), "...")
            task = task_key_message(path, value)
            if task:
                return task
            return (
                f"{path}: {did_you_mean(path.rpartition('.')[2], known or [])}{path.rpartition('.')[0]} takes any "
                f"key, and Hydra adds a new one with a `+` in front: +{path}={value}"
            )
        if known is not None:
            return unknown_key_message(path, known)
        return f"{path}: unknown key. Check its spelling against `python -m sft_exp --cfg job`."
    text = text.split("Config search path:")[0]  # Hydra's provider list says nothing a user acts on
    first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    rest = [line.strip() for line in text.strip().splitlines()[1:] if line.strip()]
    return " ".join([first_line, *rest]).replace("To append to your config use", "(to add a new key use")


def task_key_message(path: str, value: str) -> str | None:
    """evals.<task>.<key> the task's preset does not set: a `+` adds a key its task type has; any other key
    is a misspelling, told with "did you mean" (a `+` would only move the failure to when the task is built)."""
    import dataclasses

    from sft_exp.evaluation.tasks import TASK_TYPES

    parts = path.split(".")
    if len(parts) != 3 or parts[0] != "evals":
        return None
    known = [f.name for settings in TASK_TYPES.values() for f in dataclasses.fields(settings.settings)]
    if parts[2] in known:
        return f"{path}: the preset evals.{parts[1]} does not set it; add it with a `+` in front: +{path}={value}"
    return (
        f"{path}: unknown key; {did_you_mean(parts[2], dict.fromkeys(known))}a task's keys are "
        f"{', '.join(dict.fromkeys(known))}."
    )


# `data.sources=[{path:a.jsonl,name:b}]` unquoted: bash's brace expansion makes it two arguments,
# `data.sources=[path:a.jsonl]` and `data.sources=[name:b]`, and OmegaConf sees strings where mappings go.
_EXPANDED = re.compile(r"^([\w.]+)=\[(\w+):(.*)\]$")


def split_by_the_shell(text: str, overrides: list[str]) -> str | None:
    """The one-line fix for an override the shell's brace expansion split: quote it."""
    split = [m for m in map(_EXPANDED.match, overrides) if m]
    if not split or "is not a subclass of" not in text:
        return None
    key = split[0].group(1)
    fields = ",".join(f"{m.group(2)}:{m.group(3)}" for m in split if m.group(1) == key)
    return (
        f"{key}: the shell split the mapping in it into separate arguments ({{a,b}} is brace expansion); "
        f"quote the whole override: '{key}=[{{{fields}}}]'"
    )


# Top-level keys and groups that became part of another: the old name -> (the new one, what changed). An
# override of the old name is answered with the same override under the new one.
MERGED_KEYS = {
    "evaluators": (
        "evals",
        "the `evaluators` group is part of `evals` now: an entry of `evals` with a `_target_` "
        "is an evaluator of your own, every other entry a task",
    ),
}


def merged_key_message(path: str, overrides: list[str]) -> str | None:
    """`evaluators=none`, `+evaluators.mine._target_=...` (a key of MERGED_KEYS, or under one): the same
    overrides under the new name, e.g. evals=none, +evals.mine._target_=..."""
    old = path.split(".", 1)[0]
    if old not in MERGED_KEYS:
        return None
    new, why = MERGED_KEYS[old]
    typed = [o for o in overrides if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] == old] or [path]
    fixes = []
    for override in typed:
        deleted, rest = override.startswith("~"), override.lstrip("+~")[len(old) :]
        if rest == "=default":  # the old default scored the tasks of `evals`, as every run does now
            fixes.append(f"leave {override} out")
            continue
        if rest.startswith("."):  # a new entry of `evals` is added with a `+`
            instead = f"{'~' if deleted else '+'}{new}{rest}"
        else:  # a choice of the old group, or ~evaluators (nothing scored)
            instead = f"{new}=none" if deleted or not rest else f"{new}{rest}"
        fixes.append(f"use {instead} instead of {override}")
    return f"{old}: {why}; {'; '.join(fixes)}."


def moved_key(path: str, overrides: list[str]) -> str | None:
    """A TRL name typed under `trainer.` that lives elsewhere in sft_exp (trainer.learning_rate -> optimizer.lr),
    or a TrainingArguments field sft_exp passes through (+trainer.extra_args.<name>): where it goes; or a
    key of a group merged into another (MERGED_KEYS: evaluators -> evals)."""
    from sft_exp.training.arguments import home, moved_key_message

    merged = merged_key_message(path, overrides)
    if merged:
        return merged
    value = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == path), "<value>")
    name = path.rpartition(".")[2]
    if not path.startswith("trainer.") or path.count(".") != 1:
        return None
    return moved_key_message(path, value, () if home(name) else training_arguments_fields())


def training_arguments_fields() -> list[str]:
    """transformers.TrainingArguments' field names (imports torch: only on the way to an error message)."""
    import dataclasses

    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments)]


def composed(overrides: list[str], config_name: str | None = "config"):
    """Hydra's compose of conf/config.yaml (for the tools that are not @hydra.main), its errors as ConfigError."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import sft_exp.config  # noqa: F401  registers the schemas and the ${asset:} resolver
    from sft_exp.errors import ConfigError
    from sft_exp.paths import config_dir

    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            return compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(explain(error, overrides)) from None


def _keys_beside(path: str, overrides: list[str]):
    """The keys of `path`'s parent node in the config composed without the override that named `path`, and
    whether that node is a dict of any keys (no schema) rather than a component's settings."""
    parent = path.rpartition(".")[0]
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != path]
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import DictConfig, OmegaConf

        from sft_exp.paths import config_dir

        GlobalHydra.instance().clear()
        with initialize_config_dir(str(config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=kept)
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig):
            return None, False
        return [k for k in node.keys() if not str(k).startswith("_")], OmegaConf.get_type(node) is dict
    except Exception:
        return None, False


def install_for_hydra_main() -> None:
    """Make `@hydra.main` report a composition error as a user error (exit 2), not Hydra's exit 1.

    Hydra runs the whole job through hydra._internal.utils.run_and_report, which prints an exception and
    exits 1; errors raised by composing the config (before our task function runs) are answered here.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sft_exp import compat

    def guard(func):
        def guarded():
            try:
                return func()
            except (HydraException, OmegaConfBaseException) as error:
                if type(error).__name__ == "InstantiationException":
                    raise
                print(f"error: {explain(error, _command_line_overrides())}", file=sys.stderr)
                sys.exit(2)

        return guarded

    compat.wrap_hydra_job_runner(guard)


def _command_line_overrides() -> list[str]:
    return [arg for arg in sys.argv[1:] if ("=" in arg or arg.startswith("~")) and not arg.startswith("-")]
