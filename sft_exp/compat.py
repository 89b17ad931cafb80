"""Every private API of datasets, transformers, accelerate, Optuna and Hydra that sft_exp relies on, in one place.

Each has no public equivalent that does the same job without a cost the data pipeline exists to
avoid; tests/test_compat.py checks each against the installed version, so an upgrade that changes
one fails there, by name, instead of somewhere deep in data preparation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

# Private methods of dependency classes that sft_exp's subclasses override or call through super(). A subclass
# may only override (or call) a private method listed here; tests/test_compat.py checks that each still exists
# on the installed version, and that no sft_exp class overrides a private method that is not listed.
PRIVATE_OVERRIDES = {
    "transformers.Trainer": (
        "_save_checkpoint",  # training/checkpoints.py: into a temporary folder, renamed when complete
        "_get_output_dir",  # training/checkpoints.py: where that folder goes
        "_get_num_items_in_batch",  # training/trainer.py: the supervised tokens, over a split sequence too
        "_issue_warnings_after_load",  # training/trainer.py: tied weights are not "missing" on resume
        "_prepare_context_parallel_inputs",  # training/trainer.py: ring attention shards sft_exp's columns too
    ),
    "submitit.slurm.slurm.SlurmInfoWatcher": (
        "_make_command",  # run/slurm.py: squeue where the cluster has no accounting for sacct
    ),
}

# Availability checks of engines that dependencies call on every run, and that import the engine to compare a
# model with its classes (module -> (its checks, the engine)). load_engines_only_where_used replaces them there;
# tests/test_compat.py checks that each is still there and still guards the engine's import.
ENGINE_CHECKS = {
    # Trainer.__init__, save_pretrained -> unwrap_model: `if is_deepspeed_available(): from deepspeed import ...`
    "accelerate.utils.other": (("is_deepspeed_available",), "deepspeed"),
    # every LoRA/DoRA layer peft creates (training, PeftModel.from_pretrained): the bitsandbytes dispatchers
    "peft.tuners.lora.model": (("is_bnb_available", "is_bnb_4bit_available"), "bitsandbytes"),
}

if TYPE_CHECKING:  # imported where used: the sweeper and the launcher-side code do not load datasets
    import datasets
    import pyarrow as pa


def dataset_fingerprint(dataset: datasets.Dataset) -> str:
    """datasets' own hash of a dataset's content and history (`Dataset._fingerprint`).

    Used as part of the cache key of a source's tokenized rows: letting `map` hash its arguments
    instead would hash the tokenizer (seconds per source) on every run.
    """
    return dataset._fingerprint


def row_indices(dataset: datasets.Dataset) -> pa.ChunkedArray | None:
    """Which rows of `dataset.data` the dataset shows, in order (`Dataset._indices`); None: all, in order.

    The public ways to read a selected or shuffled dataset (`[:]`, `flatten_indices`) copy it
    one row-chunk at a time or write it to disk; with the indices one Arrow `take` gathers it whole.
    """
    indices = dataset._indices
    return None if indices is None else indices.column(0)


@contextmanager
def datasets_offline():
    """datasets and huggingface_hub offline for the block: both read HF_HUB_OFFLINE once, at import
    (`datasets.config.HF_HUB_OFFLINE`, `huggingface_hub.constants.HF_HUB_OFFLINE`), so the environment
    variable cannot switch them now. Used to read evaluation documents that are on this machine, or fail at once."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def compile_jinja_template():
    """transformers' cached compiler of chat templates (`_compile_jinja_template`), or None without it.

    It is the compiler `render_jinja_template` uses (same Jinja environment and extensions); calling
    it directly renders a conversation without re-copying its messages each time.
    """
    from transformers.utils import chat_template_utils

    return getattr(chat_template_utils, "_compile_jinja_template", None)


def set_loss_shifts_labels(trainer) -> None:
    """Tell transformers.Trainer that sft_exp's loss shifts labels (`Trainer._loss_shifts_labels`).

    The Trainer counts `num_items_in_batch` over `labels[..., 1:]` only when it believes the model's
    own loss shifts them; sft_exp computes the loss itself, for any model, and always shifts.
    """
    trainer._loss_shifts_labels = True


# ----------------------------------------------------------------------------- torch
def tensor_version(tensor) -> int:
    """A tensor's in-place modification counter (`Tensor._version`): a cached reading of it stays valid while
    this does not change."""
    return tensor._version


# ----------------------------------------------------------------------------- transformers
def attn_implementation(model) -> str | None:
    """The attention a loaded model runs (`config._attn_implementation`; public only as a constructor argument)."""
    return getattr(model.config, "_attn_implementation", None)


def set_name_or_path(model, folder: str) -> None:
    """Where a model says it was loaded from (`config._name_or_path`, which peft records as the adapter's
    base_model_name_or_path), so AutoPeftModel finds a base saved by sft_exp."""
    model.name_or_path = model.config._name_or_path = str(folder)


def keep_generation_config(config) -> None:
    """Mark a generation config as the model's own (`GenerationConfig._from_model_config = False`), so
    generate() never rebuilds it from config.json's special tokens."""
    config._from_model_config = False


# ----------------------------------------------------------------------------- DeepSpeed and bitsandbytes
def load_engines_only_where_used() -> None:
    """DeepSpeed (~2 s) and bitsandbytes (~3 s, and its CPU warnings) load only in a process that uses them.

    accelerate unwraps a model (Trainer.__init__, every save_pretrained) and peft creates a LoRA layer only after
    asking whether the engine is installed, then import it to compare the model with its classes. Here (in the
    modules of ENGINE_CHECKS) they ask whether the engine is loaded: a model can be a DeepSpeedEngine, or hold a
    bitsandbytes layer, only once that engine is loaded (a ZeRO run's accelerator.prepare, a QLoRA model's
    quantized load), and then the check answers as before. Why not switch the engines off by the config, in a
    block around training: the answer would rest on reading every way a run may use them (distributed=deepspeed,
    an accelerate config, a hand-written quantization_config), and a wrong "unused" would make peft wrap a
    4-bit layer as a plain Linear, silently; and evaluate, export and a trainer used after the block need it too.
    Process-wide, idempotent."""
    import importlib
    import sys

    for module_name, (checks, engine) in ENGINE_CHECKS.items():
        module = importlib.import_module(module_name)
        for name in checks:
            original = getattr(module, name)
            if getattr(original, "_sft_exp", False):
                continue

            def check(original=original, engine=engine):
                return engine in sys.modules and original()

            check._sft_exp = True
            setattr(module, name, check)


# ----------------------------------------------------------------------------- accelerate
def set_distributed_type(state, distributed_type) -> None:
    """Switch accelerate's shared state to another DistributedType (`PartialState._shared_state`): the attribute
    alone is per instance, and every later AcceleratorState / PartialState reads the shared dict."""
    from accelerate.state import PartialState

    state.distributed_type = PartialState._shared_state["distributed_type"] = distributed_type


def forget_accelerate_preparation(model) -> bool:
    """Undo `accelerator.prepare`'s mark on a bare model (`_is_accelerate_prepared`); True when it was marked."""
    if not getattr(model, "_is_accelerate_prepared", False):
        return False
    del model._is_accelerate_prepared
    return True


def name_ulysses_attention(handler, attention: str) -> None:
    """Name the model's attention implementation in accelerate's DeepSpeedSequenceParallelConfig.

    Its constructor accepts only transformers' own names (sdpa, flash_attention_2/3, hub flash kernels); a
    model on sft_exp's `sdpa_varlen` (sdpa per example, registered in transformers' attention registry where
    DeepSpeed looks it up, and what keeps packed examples apart once Ulysses drops the mask) is set after it.
    DeepSpeed itself requires the name to equal the model's own attention implementation.
    """
    handler.sp_attn_implementation = attention


# ----------------------------------------------------------------------------- Optuna and Hydra
def trial_id(trial) -> int:
    """The storage id of an Optuna trial (`Trial._trial_id` / `FrozenTrial._trial_id`): storage calls take it,
    and Optuna has no public accessor."""
    return trial._trial_id


def study_id(study) -> int:
    """The storage id of an Optuna study (`Study._study_id`)."""
    return study._study_id


def job_return_value(result):
    """What a Hydra job returned or raised (`JobReturn._return_value`); the public `return_value` re-raises."""
    return result._return_value


def wrap_hydra_job_runner(wrap) -> None:
    """Run what `@hydra.main` runs (composing the config, then the task function) as `wrap(func)`: Hydra
    passes it to `hydra._internal.utils.run_and_report`, which prints any exception and exits 1 before
    our code could answer a composition error. Idempotent."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    if getattr(original, "_sft_exp", False):
        return

    def run_and_report(func):
        return original(wrap(func))

    run_and_report._sft_exp = True
    hydra_utils.run_and_report = run_and_report


def wrap_hydra_save_config(wrap) -> None:
    """Route Hydra's writes of a job's .hydra/ files (`hydra.core.utils._save_config(cfg, filename, output_dir)`,
    which run_job calls before the task function, at every launch) through `wrap(original)`. Idempotent."""
    import hydra.core.utils as hydra_core_utils

    original = hydra_core_utils._save_config
    if getattr(original, "_sft_exp", False):
        return
    wrapped = wrap(original)
    wrapped._sft_exp = True
    hydra_core_utils._save_config = wrapped
