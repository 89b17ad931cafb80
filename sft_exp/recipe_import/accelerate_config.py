"""An accelerate config (`accelerate launch --config_file FILE`) -> the distributed group, the precision, and the
command that launches the same processes (torchrun); a world size that disagrees with the recipe's batch
settings is refused, naming both."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sft_exp.recipe_import.model_data import Unmapped
from sft_exp.recipe_import.read import RecipeError
from sft_exp.recipe_import.rows import GROUP, Recipe, Row, Setting

STRATEGIES = {"NO": None, "MULTI_GPU": "ddp", "MULTI_CPU": "ddp", "FSDP": "fsdp", "DEEPSPEED": "deepspeed"}
PRECISION = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}
# Launcher fields that change nothing in training at these values (accelerate's defaults on one machine).
LAUNCHER_DEFAULTS = {
    "compute_environment": "LOCAL_MACHINE",
    "debug": False,
    "downcast_bf16": "no",
    "gpu_ids": "all",
    "machine_rank": 0,
    "main_training_function": "main",
    "rdzv_backend": "static",
    "same_network": True,
    "tpu_env": [],
    "tpu_use_cluster": False,
    "tpu_use_sudo": False,
    "use_cpu": False,
    "enable_cpu_affinity": False,
    "deepspeed_multinode_launcher": "standard",
}
AT_DEFAULT = "accelerate's default on one machine: nothing to set"
DS = "distributed.training_args.deepspeed"
FSDP = "distributed.training_args.fsdp_config"
SHARDING = {"FULL_SHARD": True, "SHARD_GRAD_OP": False, 1: True, 2: False}


def _launcher(name: str, value) -> Row:
    if name in LAUNCHER_DEFAULTS and value == LAUNCHER_DEFAULTS[name]:
        return Row(name, info=AT_DEFAULT)
    if name in (
        "num_processes",
        "num_machines",
        "machine_rank",
        "main_process_ip",
        "main_process_port",
        "rdzv_backend",
        "same_network",
        "gpu_ids",
    ):
        return Row(name, info=f"the launch command ({value})")
    raise Unmapped(f"{name}: {value!r} has no sft_exp form (accelerate launcher setting)")


def _deepspeed(name: str, value) -> Row:
    if name == "zero_stage":
        return Row(name, [Setting(f"{DS}.zero_optimization.stage", value)])
    if name in ("offload_optimizer_device", "offload_param_device"):
        if value == "none":
            return Row(name, info="none: nothing offloaded, as the preset")
        return Row(name, [Setting(f"{DS}.zero_optimization.{name.rsplit('_', 1)[0]}.device", value)])
    if name == "zero3_save_16bit_model":
        return Row(name, [Setting(f"{DS}.zero_optimization.stage3_gather_16bit_weights_on_model_save", value)])
    if name == "zero3_init_flag":
        return Row(name, info="transformers builds the model partitioned under ZeRO-3 by itself")
    if name in ("gradient_accumulation_steps", "gradient_clipping", "deepspeed_config_file"):
        return Row(name, info="checked against the recipe's batch settings")
    if name == "seq_parallel_communication_data_type":
        return Row(name, info="read with parallelism_config")
    return _launcher(name, value)


def _fsdp(name: str, value) -> Row:
    short = name.removeprefix("fsdp_")
    if short == "version" and value != 2 or short == "sharding_strategy" and value not in SHARDING:
        raise Unmapped(f"fsdp_config.{name}: {value!r}: sft_exp shards with FSDP2 (full or grad-op sharding)")
    if short == "sharding_strategy":
        return Row(
            name,
            [Setting(f"{FSDP}.reshard_after_forward", SHARDING[value])],
            "FSDP1's strategy as FSDP2's reshard_after_forward (sft_exp shards with FSDP2)",
        )
    if short in (
        "auto_wrap_policy",
        "cpu_ram_efficient_loading",
        "state_dict_type",
        "reshard_after_forward",
        "transformer_layer_cls_to_wrap",
        "version",
    ):
        return Row(name, [Setting(f"{FSDP}.{short}", value)])
    if short in ("backward_prefetch", "forward_prefetch", "sync_module_states", "use_orig_params"):
        return Row(name, note="an FSDP1 setting; FSDP2 prefetches and keeps original parameters itself")
    if short == "activation_checkpointing":
        if value:
            return Row(name, [Setting(f"{GROUP}memory", "checkpointing")], info="sft_exp's memory=checkpointing")
        return Row(name, info="off: checkpointing is the recipe's gradient_checkpointing (memory=)")
    if short == "offload_params" and not value:
        return Row(name, info="off, as the preset")
    raise Unmapped(f"fsdp_config.{name}: {value!r} has no sft_exp form")


def _parallelism(config: dict, processes: int) -> Row:
    sizes = {name.removeprefix("parallelism_config_"): value for name, value in config.items()}
    kinds = ("dp_replicate_size", "dp_shard_size", "tp_size", "cp_size", "sp_size")
    product = math.prod(int(sizes.get(kind, 1)) for kind in kinds)
    if product != processes:
        raise RecipeError(
            f"parallelism_config: dp_replicate x dp_shard x tp x cp x sp = {product}, but num_processes is "
            f"{processes}: the world size disagrees; make them equal"
        )
    for kind, what in (("tp_size", "tensor"), ("cp_size", "context"), ("sp_size", "sequence")):
        if int(sizes.get(kind, 1)) > 1:
            raise Unmapped(
                f"parallelism_config.{kind}={sizes[kind]}: sft_exp has no {what} parallelism yet (data "
                "parallel, FSDP2 and ZeRO only)"
            )
    return Row("parallelism_config", info="data parallel only: what the distributed strategy does")


def _check_batch(r: Recipe, ds: dict, processes: int, where: str) -> None:
    """DeepSpeed's own batch numbers, when fixed (not "auto"), must agree with the recipe and the world size."""
    micro, accumulation = r.get("per_device_train_batch_size"), r.get("gradient_accumulation_steps")
    expected = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * processes,
    }
    for name, value in expected.items():
        given = ds.get(name)
        if given not in (None, "auto") and int(given) != value:
            raise RecipeError(
                f"{where}: {name}={given}, but the recipe's per_device_train_batch_size {micro} x "
                f"gradient_accumulation_steps {accumulation} x {processes} processes (num_processes) make "
                f"{name}={value}: the world size disagrees with the batch settings; make them agree"
            )


def convert_accelerate(config: dict, r: Recipe, path: Path) -> tuple[list[Row], list[tuple[str, str]], dict]:
    """(rows, unmapped (field, why), launch) of an accelerate config; launch: processes, machines, address."""
    kind = config.get("distributed_type", "NO")
    if kind not in STRATEGIES:
        raise RecipeError(f"{path}: distributed_type {kind!r}: sft_exp runs {', '.join(STRATEGIES)}")
    processes = int(config.get("num_processes", 1) or 1)
    rows = [
        Row(
            "distributed_type",
            [Setting(f"{GROUP}distributed", STRATEGIES[kind])] if STRATEGIES[kind] else [],
            info="" if STRATEGIES[kind] else "one process",
        )
    ]
    rows.append(_precision(config.get("mixed_precision", "no"), r, path))
    ds = dict(config.get("deepspeed_config") or {})
    if ds.get("deepspeed_config_file"):
        ds.update(json.loads(Path(ds["deepspeed_config_file"]).expanduser().read_text()))
    _check_batch(r, ds, processes, f"{path}: deepspeed_config")
    unmapped = []
    for name, value in config.items():
        nested = {"deepspeed_config": _deepspeed, "fsdp_config": _fsdp}.get(name)
        items = (value or {}).items() if nested else [(name, value)]
        for field, field_value in items:
            try:
                if nested:
                    rows.append(nested(field, field_value))
                elif name == "parallelism_config":
                    rows.append(_parallelism(value or {}, processes))
                elif name not in ("distributed_type", "mixed_precision"):
                    rows.append(_launcher(name, value))
            except Unmapped as missing:
                unmapped.append((f"{path.name}: {name}" + (f".{field}" if nested else ""), missing.why))
    launch = {"processes": processes, "machines": int(config.get("num_machines", 1) or 1),
              "address": config.get("main_process_ip"), "port": config.get("main_process_port"),
              "gpu_ids": config.get("gpu_ids", "all")}  # fmt: skip
    quiet = [row.field for row in rows if row.info == AT_DEFAULT]
    rows = [row for row in rows if row.info != AT_DEFAULT]
    if quiet:
        rows.append(Row(f"{len(quiet)} launcher settings", info=f"{', '.join(quiet)}: {AT_DEFAULT}"))
    for row in rows:
        row.field = f"accelerate: {row.field}"
    return rows, unmapped, launch


def _precision(value: str, r: Recipe, path: Path) -> Row:
    if value not in PRECISION:
        raise RecipeError(f"{path}: mixed_precision {value!r}: one of {', '.join(PRECISION)}")
    chosen = PRECISION[value]
    said = "fp16" if r.get("fp16") else "bf16" if r.get("bf16") else "fp32" if r.has("bf16") else None
    if said is not None and said != chosen:
        raise RecipeError(
            f"{path}: mixed_precision {value!r} disagrees with the recipe's "
            f"{'fp16' if r.has('fp16') else 'bf16'}={r.get('fp16') if r.has('fp16') else r.get('bf16')} "
            f"({said}); make them agree"
        )
    return Row("mixed_precision", [Setting("trainer.precision", chosen)])


def launch_prefix(launch: dict | None) -> str:
    """The command that starts the processes the accelerate config asked for: torchrun, or plain python."""
    if not launch or launch["processes"] <= 1:
        return "python"
    devices = "" if launch["gpu_ids"] in ("all", None) else f"CUDA_VISIBLE_DEVICES={launch['gpu_ids']} "
    machines = launch["machines"]
    if machines <= 1:
        return f"{devices}torchrun --nproc_per_node {launch['processes']}"
    address = f"{launch['address'] or '<first node>'}:{launch['port'] or 29500}"
    return (
        f"{devices}torchrun --nnodes {machines} --nproc_per_node {launch['processes'] // machines} "
        f"--rdzv-backend c10d --rdzv-endpoint {address}"
    )
