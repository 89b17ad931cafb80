"""Checks that run before any model or data loads, so a mistake costs seconds, not a model download.

Hydra already refuses unknown groups, misspelled keys and wrong types at compose time (the
schema in sft_exp/config.py); these are the checks a schema cannot express.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sft_exp.errors import ConfigError
from sft_exp.plain import plain
from sft_exp.training.arguments import check_scheduler, refuse_owned_extra_args
from sft_exp.training.choices import check_trainer_choices

# A hub id is `name` or `org/name`; anything else that does not exist on disk is a missing local path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def validate_config(cfg: DictConfig) -> None:
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            "required config value(s) not set: "
            + ", ".join(missing)
            + ". Set them on the command line, e.g. `python -m sft_exp "
            + missing[0]
            + "=...`."
        )
    refuse_env_block(cfg)
    check_known_keys(cfg)
    _check_trainer(cfg.trainer)
    refuse_owned_extra_args(
        plain(cfg.trainer.extra_args), list(cfg.trainer.keys()), plain(cfg.distributed.training_args) or {}
    )
    check_packages(cfg)
    _check_early_stopping(cfg)
    from sft_exp.models.adapters import check_adapter_config
    from sft_exp.run.distributed import check_distributed_config

    # A strategy or adapter the installed packages cannot run is named first: installing it is the fix,
    # whatever else is wrong (the model folder's contents are checked next).
    check_distributed_config(cfg.distributed.strategy)
    check_adapter_config(plain(cfg.model), plain(cfg.peft) if cfg.peft else None)
    _check_model(cfg.model)
    from sft_exp.run.sequence_parallel import check_sequence_parallel

    sizes = {key: cfg.distributed.get(key) for key in ("sp_size", "cp_size")}
    check_sequence_parallel(cfg.distributed.strategy, sizes, cfg.model, cfg.data, cfg.trainer)
    # The data settings check themselves when train.run builds them (sft_exp.data.DataSettings), still
    # before torch or any model loads.


def check_known_keys(cfg: DictConfig) -> None:
    """A key added with `+` (Hydra's advice for a misspelled one) to a component with a schema: refused
    here with "did you mean", not by the component's constructor after data and model load; a group that
    became part of another (cli_errors.MERGED_KEYS), named with its new name."""
    import dataclasses

    from sft_exp.cli_errors import MERGED_KEYS, moved_key
    from sft_exp.errors import unknown_key_message
    from sft_exp.run import hydra_job
    from sft_exp.training.arguments import shown

    for key in cfg.keys():  # `+evaluators.mine._target_=...` composes (a new top-level key): answered here
        if key in MERGED_KEYS:
            raise ConfigError(moved_key(str(key), hydra_job.overrides() or [f"+{key}={shown(plain(cfg[key]))}"]))
    for group in ("model", "data", "trainer", "loss", "memory", "optimizer", "peft", "distributed"):
        node = cfg.get(group)
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if schema is None or not dataclasses.is_dataclass(schema):
            continue
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known and not str(key).startswith("_"):
                moved = moved_key(f"{group}.{key}", [f"{group}.{key}={shown(node[key])}"])
                raise ConfigError(
                    moved or unknown_key_message(f"{group}.{key}", [k for k in known if not k.startswith("_")])
                )


def _check_early_stopping(cfg: DictConfig) -> None:
    """transformers' EarlyStoppingCallback asserts at the first step (or fails with an AttributeError at the
    first evaluation) without a metric and evaluations to watch: say which keys to set instead."""
    names = [
        name
        for name, cb in (cfg.get("callbacks") or {}).items()
        if cb is not None and str(cb.get("_target_", "")).endswith("EarlyStoppingCallback")
    ]
    if not names:
        return
    missing = []
    if not cfg.trainer.get("eval_steps"):
        missing.append("trainer.eval_steps=<steps between evaluations>")
    if not (cfg.trainer.get("extra_args") or {}).get("metric_for_best_model"):
        missing.append(
            "+trainer.extra_args.metric_for_best_model=eval_loss (or another logged eval metric, "
            "e.g. eval_heldout/exact_match)"
        )
    if missing:
        raise ConfigError(
            f"callbacks.{names[0]} (EarlyStoppingCallback) stops on an evaluated metric; set "
            + " and ".join(missing)
            + "."
        )


def _check_model(model) -> None:
    if not model.name_or_path and not model.init_config:
        raise ConfigError("model.name_or_path is not set: give a hub id or a local folder (or use model=tiny).")
    _check_one_source(model)
    for key in ("name_or_path", "tokenizer"):
        value = model.get(key)
        if value:
            check_model_path(f"model.{key}", value)
            check_hub_model(f"model.{key}", value, model.get("revision"))
    _check_gguf_file(model)
    check_model_folder(model)
    if not model.name_or_path and not model.tokenizer:
        raise ConfigError("model.tokenizer is not set: a model built from model.init_config needs a tokenizer path.")
    if model.init_config and not model.name_or_path and "model_type" not in model.init_config:
        raise ConfigError("model.init_config needs a model_type (e.g. qwen2, llama) to build a model from config.")


def _check_one_source(model) -> None:
    """Pretrained weights never meet the demo's tokenizer and recipe unasked (model=tiny is built from config)."""
    from sft_exp.paths import asset_path

    if not model.name_or_path:
        return
    demo_tokenizer = bool(model.tokenizer) and Path(str(model.tokenizer)) == asset_path("tokenizer")
    if model.init_config or demo_tokenizer:
        raise ConfigError(
            f"model.name_or_path={model.name_or_path} is set on a preset that builds a random model from "
            "model.init_config with the demo tokenizer (model=tiny, the default, and its tiny_demo recipe). "
            f"For a pretrained model use `python -m sft_exp model=hf model.name_or_path={model.name_or_path} ...` "
            "(its own tokenizer, fine-tuning defaults), or a named preset such as model=smollm2_135m."
        )


def _check_gguf_file(model) -> None:
    gguf = model.get("gguf_file")
    if not gguf:
        return
    if not model.name_or_path:
        raise ConfigError(f"model.gguf_file={gguf} needs model.name_or_path: the folder (or hub id) holding it.")
    folder = Path(os.path.expanduser(model.name_or_path))
    if folder.is_dir() and not (folder / gguf).is_file() and not Path(gguf).is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise ConfigError(
            f"model.gguf_file={gguf}: no such file in model.name_or_path={model.name_or_path}"
            + (f" (its .gguf files: {', '.join(found)})." if found else " (it has no .gguf file).")
        )


def check_model_path(key: str, value: str) -> None:
    """A value that is not an existing folder must look like a hub id; say which it was meant to be."""
    path = Path(os.path.expanduser(value))
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}={value}: expected a folder (with config.json / tokenizer files), got a file.")
        return
    looks_local = value.startswith(("/", "./", "../", "~")) or value.count("/") > 1 or not _HUB_ID.match(value)
    if looks_local:
        raise ConfigError(
            f"{key}={value}: no such folder. Give an existing local folder (saved with save_pretrained) "
            "or a hub id such as Qwen/Qwen2.5-0.5B-Instruct."
        )


def check_hub_model(key: str, value: str, revision: str | None) -> None:
    """A hub id that is neither in the local cache nor reachable fails now, in one line, not after the
    data is prepared and 5 download retries later as a transformers traceback."""
    if Path(os.path.expanduser(value)).exists():
        return
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(try_to_load_from_cache(value, "config.json", revision=revision), str) or isinstance(
        try_to_load_from_cache(value, "tokenizer_config.json", revision=revision), str
    ):
        return  # cached: transformers loads it offline
    download = (
        f"Download it where the Hub is reachable (`hf download {value} --local-dir DIR`) and set "
        f"{key}=DIR, or give another local folder."
    )
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{key}={value}: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set. {download}")
    try:
        model_info(value, revision=revision, timeout=10)
    except GatedRepoError:
        raise ConfigError(
            f"{key}={value}: a gated model; accept its licence on the Hub and log in (`hf auth login`)."
        ) from None
    except RevisionNotFoundError:
        raise ConfigError(f"{key}={value}: the Hub has no revision model.revision={revision}.") from None
    except RepositoryNotFoundError:
        raise ConfigError(
            f"{key}={value}: no such model on the Hub (or private: log in with `hf auth login`). "
            "Check the id, or give a local folder."
        ) from None
    except Exception as err:  # no network, DNS, proxy, timeout: the Hub cannot be reached from here
        if "HTTPError" in type(err).__name__:
            return  # the Hub answered; let transformers load it and say what it says
        raise ConfigError(
            f"{key}={value}: it is not in the local cache and the Hugging Face Hub cannot be reached "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). {download}"
        ) from None


# What a local folder must hold to load, by what reads it (transformers' file names).
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json", "tf_model.h5", "*.gguf")
_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "*.gguf")


def check_model_folder(model) -> None:
    """A local model folder that exists but holds no model (or no tokenizer): one error now, not a
    transformers traceback after the data was tokenized."""

    def holds(folder: Path, patterns) -> bool:
        return any(next(folder.glob(pattern), None) is not None for pattern in patterns)

    name = model.get("name_or_path")
    folder = Path(os.path.expanduser(str(name))) if name else None
    if folder is not None and folder.is_dir() and not model.get("gguf_file"):
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:8]) or "nothing"
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise ConfigError(
                f"model.name_or_path={name}: the folder holds no model (no config.json; it has "
                f"{present}). Point it at a folder written by save_pretrained, or give a hub id."
            )
        if not holds(folder, _WEIGHTS):
            raise ConfigError(
                f"model.name_or_path={name}: the folder has a config.json but no weights (no "
                f"*.safetensors or pytorch_model*.bin; it has {present}). Copy the weights in, or "
                "point it at the folder that has them."
            )
    tokenizer = model.get("tokenizer") or (name if folder is not None and folder.is_dir() else None)
    tok_folder = Path(os.path.expanduser(str(tokenizer))) if tokenizer else None
    if (
        tok_folder is not None
        and tok_folder.is_dir()
        and not model.get("gguf_file")
        and not holds(tok_folder, _TOKENIZER)
    ):
        key = "model.tokenizer" if model.get("tokenizer") else "model.name_or_path"
        raise ConfigError(
            f"{key}={tokenizer}: the folder holds no tokenizer (no tokenizer.json or "
            "tokenizer_config.json); save one there (tokenizer.save_pretrained) or set model.tokenizer."
        )


def _check_trainer(trainer) -> None:
    positive = (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "gradient_accumulation_steps",
        "logging_steps",
        "save_steps",
    )
    for key in positive:
        if trainer[key] is not None and trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={trainer[key]} must be at least 1.")
    if trainer.max_steps == 0 or (trainer.max_steps < 0 and trainer.num_train_epochs <= 0):
        raise ConfigError("nothing to train: set trainer.max_steps > 0 or trainer.num_train_epochs > 0.")
    check_trainer_choices(precision=trainer.precision, nonfinite_loss=trainer.nonfinite_loss)
    if trainer.save_strategy not in SAVE_STRATEGIES:
        unquoted = (
            ' (YAML reads an unquoted no as false: write save_strategy: "no")'
            if trainer.save_strategy in ("False", "false")
            else ""
        )
        raise ConfigError(
            f"trainer.save_strategy={trainer.save_strategy} is not one of {', '.join(SAVE_STRATEGIES)}{unquoted}."
        )
    check_scheduler(trainer.lr_scheduler_type, plain(trainer.lr_scheduler_kwargs))


SAVE_STRATEGIES = ("steps", "epoch", "best", "no")
# What a setting needs installed: (setting, value that needs it, its package's module, how to install it).
NEEDS_PACKAGE = (
    (
        "model.attn_implementation",
        "flash_attention_2",
        "flash_attn",
        "pip install flash-attn --no-build-isolation (CUDA only), or model.attn_implementation=sdpa",
    ),
    (
        "model.attn_implementation",
        "flash_attention_3",
        "flash_attn_interface",
        "install FlashAttention 3 from its hopper/ folder (H100), or model.attn_implementation=sdpa",
    ),
    ("trainer.extra_args.use_liger_kernel", True, "liger_kernel", "pip install liger-kernel, or leave it out"),
)


def check_packages(cfg: DictConfig) -> None:
    """A setting whose package is not installed fails now, not in a traceback after the data is prepared."""
    from importlib.util import find_spec

    for key, value, module, install in NEEDS_PACKAGE:
        if OmegaConf.select(cfg, key, default=None) == value and find_spec(module) is None:
            raise ConfigError(
                f"{key}={str(value).lower() if isinstance(value, bool) else value} needs the "
                f"{module} package, which is not installed: {install}."
            )
    attention = OmegaConf.select(cfg, "model.attn_implementation", default=None) or ""
    if "/" in attention and find_spec("kernels") is None:  # a Hub kernel, e.g. kernels-community/flash-attn
        raise ConfigError(
            f"model.attn_implementation={attention} is a Hub kernel, which needs the kernels package: "
            "pip install kernels, or model.attn_implementation=sdpa."
        )


def refuse_env_block(cfg: DictConfig) -> None:
    """TRL's `env:` block has no sft_exp key: `+env.X=1` would be saved and never applied."""
    if "env" in cfg:
        name, value = next(iter((cfg.env or {"OMP_NUM_THREADS": 1}).items()))
        raise ConfigError(
            f"env.{name}: sft_exp has no env block (it would be saved and never applied). Set "
            f"environment variables with Hydra's env_set: +hydra.job.env_set.{name}={value} on the "
            "command line, or `hydra: {job: {env_set: {" + f"{name}: {value}" + "}}}` in an "
            "experiment file; or export it before the command."
        )
