"""Shared test helpers (import them as `from tests.helpers import ...`): compose configs with Hydra's compose
API, run sft_exp in a subprocess, build tiny models and rows.

Tests never reach a hub: models come from config (`model=tiny`) or from folders saved here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Real public files shipped with the tests (licences in tests/assets/README.md): a fresh clone has them.
TEST_ASSETS = REPO / "tests" / "assets"

# Fast, quiet, offline subprocess runs.
TEST_ENV = {
    **os.environ,
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
}


def tiny_run(steps: int, train_rows: int, save_steps: int, logger: str = "logger=none") -> list[str]:
    """Overrides for a run of a few seconds: `steps` optimizer steps of 4 rows on a slice of the demo data."""
    return [
        f"trainer.max_steps={steps}",
        "trainer.logging_steps=1",
        f"trainer.save_steps={save_steps}",
        *NO_SAMPLE_GENERATIONS,
        "trainer.per_device_train_batch_size=4",
        "trainer.per_device_eval_batch_size=8",
        f"data.sources.0.max_samples={train_rows}",
        DEMO_EVAL_ROWS.format(8),
        "data.max_length=64",
        logger,
    ]


def tiny_causal_lm(
    model_type: str = "qwen2",
    *,
    vocab_size: int = 128,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    **config_kwargs,
):
    """The one tiny model builder of the suite: a random model of `model_type`, fp32, seeded.

    Defaults make a 2-layer Qwen2 of width 64 (4 heads, 2 KV heads); any config field can be overridden.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(
        intermediate_size=2 * hidden_size, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256
    )
    fields.update(config_kwargs)
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        tie_word_embeddings=tie_word_embeddings,
        **fields,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)


def prepared_rows(lengths, vocab_size: int = 128, seed: int = 0) -> list:
    """Prepared rows of random tokens: the first third a prompt (label -100), the rest a supervised reply."""
    import torch

    g = torch.Generator().manual_seed(seed)
    rows = []
    for length in lengths:
        ids = torch.randint(1, vocab_size, (length,), generator=g).tolist()
        labels = [-100 if t < length // 3 else token for t, token in enumerate(ids)]
        rows.append(
            {"input_ids": ids, "labels": labels, "position_ids": list(range(length)), "source_ids": [0] * length}
        )
    return rows


def sft_loss_and_grads(model, batch, chunk_size: int = 8):
    """sft_forward's output on `batch` and every parameter's gradient after its backward."""
    from sft_exp.training.forward import sft_forward
    from sft_exp.training.losses import NLLLoss

    model.zero_grad(set_to_none=True)
    out = sft_forward(model, batch, NLLLoss(chunk_size=chunk_size))
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def compose(overrides=()):
    """The config `python -m sft_exp <overrides>` would run, composed in-process."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import sft_exp.config  # noqa: F401  registers schemas and resolvers
    from sft_exp.paths import config_dir

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    # ${hydra:runtime.output_dir} resolves only where Hydra's config is set, as it is in a real run.
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = tempfile.mkdtemp(prefix="sft_exp_compose_")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


# COMMON.md decision 1: `resume_from_checkpoint` is a top-level key; task evaluation (which replaced
# trainer.num_sample_generations) is off with `evals=none`. Decision 5: the demo's own held-out cap.
RESUME = "resume_from_checkpoint=true"
RESUME_KEY = "resume_from_checkpoint"
NO_SAMPLE_GENERATIONS = ["evals=none"]
SAMPLE_GENERATIONS = ["evals.heldout.limit=2", "evals.heldout.max_new_tokens=8"]  # a taste of the default evaluation
DEMO_EVAL_ROWS = "data.sources.0.eval_max_samples={}"


# A few optimizer steps of the default run: enough to exercise every stage of a run.
SHORT_RUN = [
    "trainer.max_steps=4",
    "trainer.logging_steps=2",
    "trainer.save_steps=4",
    "trainer.per_device_train_batch_size=4",
    "trainer.per_device_eval_batch_size=16",
    *SAMPLE_GENERATIONS,
    "logger=none",
]


def run_sft(*args: str, timeout: float = 300, module: str = "sft_exp") -> subprocess.CompletedProcess:
    """`python -m sft_exp <args>` in a subprocess; returns the completed process (never raises on failure)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=TEST_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_base_model(folder: Path) -> Path:
    """A pretrained-model folder, offline: a tiny random Qwen2 with the demo tokenizer (ChatML and its chat
    template) whose EOS is <|endoftext|>, as Qwen2.5's is."""
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
    tokenizer.eos_token = "<|endoftext|>"
    model = tiny_causal_lm(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=512,
    )
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
