"""Recipe fields about the model, the data and the chat template -> model.*, data.*, peft."""

from __future__ import annotations

from typing import Any

from sft_exp.data.templates import describe_syntax_error, syntax_error
from sft_exp.recipe_import.read import RecipeError
from sft_exp.recipe_import.rows import GROUP, Recipe, Row, Setting

DTYPES = ("float32", "bfloat16", "float16", "auto")
PACKING_STRATEGIES = ("bfd", "wrapped")


class Unmapped(Exception):
    """A field, or a value of it, that sft_exp has no form for: the import stops naming it (or, with
    --allow-unmapped, lists and skips it)."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


def one(key: str, value: Any, note: str = "", info: str = "") -> Row:
    return Row("", [Setting(key, value)], note, info=info)


def model_name_or_path(r: Recipe, value) -> Row:
    return Row("", [Setting(f"{GROUP}model", "hf"), Setting("model.name_or_path", value)])


def dtype(r: Recipe, value) -> Row:
    if value not in DTYPES:
        raise Unmapped(f"dtype {value!r}: sft_exp's model.dtype takes {', '.join(DTYPES)}")
    note = (
        ("transformers' auto is the checkpoint's own dtype; sft_exp's model.dtype=auto is bf16 on CUDA, fp32 on CPU")
        if value == "auto"
        else ""
    )
    return one("model.dtype", value, note)


def attn_implementation(r: Recipe, value) -> Row:
    if value is None:  # transformers picks sdpa where the model supports it
        return one("model.attn_implementation", "sdpa", info="TRL leaves it to transformers, which picks sdpa")
    info = (
        "sdpa loads as sdpa_varlen: the same attention, per example in padding-free batches" if value == "sdpa" else ""
    )
    return one("model.attn_implementation", value, info=info)


def eos_token(r: Recipe, value) -> Row:
    return one("model.eos_token", value) if value is not None else Row("", info="(TRL's default: the tokenizer's own)")


def dataset_name(r: Recipe, value) -> Row:
    if r.mixture:
        return Row("", info="not read: open-r1 reads dataset_mixture when both are given")
    return one("data.sources.0.path", value)


def dataset_config(r: Recipe, value) -> Row:
    if isinstance(value, list):  # dataset_configs: [all], alignment-handbook's form
        if len(value) != 1:
            raise Unmapped(f"dataset_configs {value}: one configuration per source; list each as a source")
        value = value[0]
    if r.mixture:
        return Row("", info="not read: open-r1 reads dataset_mixture when both are given")
    return one("data.sources.0.subset", value)


def dataset_train_split(r: Recipe, value) -> Row:
    return Row("") if r.mixture else one("data.sources.0.split", value)


def dataset_test_split(r: Recipe, value) -> Row:
    """TRL evaluates on the dataset's test split, and only when eval_strategy is not "no"."""
    if r.mixture or not r.evaluates:
        return Row(
            "", info="not read: the recipe does not evaluate" if not r.mixture else "not read with dataset_mixture"
        )
    source = {"path": r.get("dataset_name"), "subset": _subset(r), "split": value}
    return one("data.eval_sources", [source])


def _subset(r: Recipe):
    value = r.get("dataset_config")
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def dataset_mixture(r: Recipe, value) -> Row:
    """open-r1's mixture: weights are fractions of each dataset's rows, the test split comes from the mixed rows."""
    if not isinstance(value, dict) or not isinstance(value.get("datasets"), list):
        raise Unmapped(
            "dataset_mixture: expected {datasets: [{id, config, split, columns, weight}], seed, test_split_size}"
        )
    sources = [_mixture_source(entry, i) for i, entry in enumerate(value["datasets"])]
    names = [source["name"] for source in sources]
    for source in sources:
        if names.count(source["name"]) > 1 and source.get("subset"):
            source["name"] = f"{source['name']}-{source['subset']}"  # one name per source (per-source loss)
    extra = set(value) - {"datasets", "seed", "test_split_size"}
    if extra:
        raise Unmapped(f"dataset_mixture.{sorted(extra)[0]}: open-r1 reads datasets, seed and test_split_size only")
    return Row(
        "",
        [
            Setting("data.sources", sources),
            Setting("data.eval_split_from", "mixture"),
            Setting("data.eval_split_size", value.get("test_split_size") or 0),
            Setting("data.seed", value.get("seed", 0)),
        ],
        note="sft_exp drops rows it cannot train (counted and reported) before taking the fractions",
    )


def _mixture_source(entry: dict, i: int) -> dict:
    where = f"dataset_mixture.datasets[{i}]"
    if not isinstance(entry, dict) or not entry.get("id"):
        raise Unmapped(f"{where}: each dataset needs an `id`")
    extra = set(entry) - {"id", "config", "split", "columns", "weight"}
    if extra:
        raise Unmapped(f"{where}.{sorted(extra)[0]}: open-r1 reads id, config, split, columns and weight")
    source = {"path": entry["id"], "name": str(entry["id"]).rstrip("/").split("/")[-1], "split": entry.get("split", "train"),
              "weight": float(entry.get("weight", 1.0))}  # fmt: skip
    if entry.get("config") is not None:
        source["subset"] = entry["config"]
    if entry.get("columns") is not None:
        source["columns"] = list(entry["columns"])
    if not 0 < source["weight"] <= 1:
        raise Unmapped(
            f"{where}.weight={source['weight']}: open-r1 takes that fraction of the rows, so it must be in (0, 1]"
        )
    return source


def dataset_num_proc(r: Recipe, value) -> Row:
    return one("data.num_proc", value)


def max_length(r: Recipe, value) -> Row:
    if value is None:
        raise Unmapped("max_length: null (no truncation): sft_exp cuts rows at data.max_length; give a number")
    return one("data.max_length", value)


def packing(r: Recipe, value) -> Row:
    return one("data.packing", bool(value))


def packing_strategy(r: Recipe, value) -> Row:
    if value not in PACKING_STRATEGIES:
        raise Unmapped(f"packing_strategy {value!r}: sft_exp packs with {', '.join(PACKING_STRATEGIES)}")
    info = "sft_exp cuts rows at max_length before packing; TRL's bfd does the same" if r.get("packing") else ""
    return one("data.packing_strategy", value, info=info)


def padding_free(r: Recipe, value) -> Row:
    info = "packed rows are always padding-free in sft_exp (TRL: with bfd too)" if r.get("packing") else ""
    return one("data.padding_free", bool(value), info=info)


def assistant_only_loss(r: Recipe, value) -> Row:
    return one("data.assistant_only_loss", bool(value))


def completion_only_loss(r: Recipe, value) -> Row:
    return one("data.completion_only_loss", value)


def chat_template(r: Recipe, value, field: str = "chat_template") -> Row:
    """open-r1's template string: checked as Jinja here, so a broken one names the recipe field and the line."""
    if not isinstance(value, str):
        raise Unmapped(f"{field}: expected the template as a string")
    error = syntax_error(value)
    if error is not None:
        raise RecipeError(
            f"{r.path}: {field} is not valid Jinja, {describe_syntax_error(value, *error)}; fix the "
            "template in the recipe"
        )
    return one("data.chat_template", value)


def chat_template_path(r: Recipe, value) -> Row:
    if not str(value).endswith((".jinja", ".j2")):
        raise Unmapped(
            f"chat_template_path {value!r}: sft_exp reads a template from a .jinja file (or a built-in name)"
        )
    from pathlib import Path

    path = Path(value).expanduser()
    if path.is_file():
        chat_template(r, path.read_text(), "chat_template_path")  # the same Jinja check, naming the field
    return one("data.chat_template", str(value))


def system_prompt(r: Recipe, value) -> Row:
    """open-r1's SFT passes system_prompt to its benchmark jobs only (open_r1/utils/evaluation.py): training
    data never sees it. Here it goes to every benchmark task the recipe names (benchmarks)."""
    benchmarks = r.get("benchmarks") or []
    if not benchmarks:
        return Row("", info="not read: open-r1 gives it to its benchmarks only, and the recipe names none")
    return Row(
        "",
        [Setting(f"evals.{name}.lm_eval_args.system_instruction", value) for name in benchmarks],
        note="open-r1 sends it to its benchmark jobs; here lm-eval's system instruction of each benchmark",
    )


def dataset_text_field(r: Recipe, value) -> Row:
    if value == "text":
        return Row("")
    if r.mixture:
        raise Unmapped("dataset_text_field with dataset_mixture: map the column in each source's columns")
    return one("data.sources.0.columns", {"text": value})


def model_init_kwargs(r: Recipe, value) -> Row:
    return one("model.load_kwargs", dict(value or {}))


def trust_remote_code(r: Recipe, value) -> Row:
    return one("model.trust_remote_code", bool(value))


def model_revision(r: Recipe, value) -> Row:
    return one("model.revision", value)


def loss_type(r: Recipe, value) -> Row:
    if value not in ("nll", "dft"):
        raise Unmapped(f"loss_type {value!r}: sft_exp's losses are nll and dft")
    return one(f"{GROUP}loss", value)


def truncation_mode(r: Recipe, value) -> Row:
    if value != "keep_start":
        raise Unmapped(f"truncation_mode {value!r}: sft_exp keeps the start of a row (keep_start)")
    return Row("", info="sft_exp keeps the start too")


LORA_KEYS = {
    "lora_r": "peft.r",
    "lora_alpha": "peft.lora_alpha",
    "lora_dropout": "peft.lora_dropout",
    "lora_target_modules": "peft.target_modules",
    "lora_modules_to_save": "peft.modules_to_save",
    "use_rslora": "peft.use_rslora",
}
TRL_LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_target_modules": None}


def use_peft(r: Recipe, value) -> Row:
    """TRL's LoRA: peft=lora (dora with use_dora, qlora with load_in_4bit), with TRL's LoRA defaults."""
    if not value:
        return Row("")
    option = "qlora" if r.get("load_in_4bit") else "dora" if r.get("use_dora") else "lora"
    defaults = [Setting(LORA_KEYS[name], v) for name, v in TRL_LORA.items() if not r.has(name)]
    return Row(
        "",
        [Setting(f"{GROUP}peft", option), *defaults],
        info="TRL's LoRA defaults (r 16, alpha 32; target modules null: peft's default for the architecture)",
    )


def lora_field(name: str):
    """lora_r, lora_alpha, ...: peft.*; without use_peft TRL ignores them, and so does the experiment."""

    def handler(r: Recipe, value) -> Row:
        if not r.get("use_peft"):
            return Row("", info="not read: use_peft is false")
        if name in LORA_KEYS:
            return one(LORA_KEYS[name], value)
        if name == "lora_task_type" and value != "CAUSAL_LM":
            raise Unmapped(f"lora_task_type {value!r}: sft_exp trains causal LMs (CAUSAL_LM)")
        return Row("", info="read by use_peft")

    return handler
