"""One construction path: the default run's components built from Python exactly as the YAML builds
them, and a callback added by config alone (no edit to train.run)."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from sft_exp.paths import asset_path
from tests.helpers import compose, tiny_run


def test_the_default_components_build_and_train_from_python_without_hydra(tmp_path):
    import torch

    from sft_exp.data import DataSettings, SFTCollator, prepare_datasets
    from sft_exp.evaluation import TaskEvaluation
    from sft_exp.models.loader import ModelLoader
    from sft_exp.run.recorder import RunRecorder
    from sft_exp.training.checkpoints import StopOnSignal
    from sft_exp.training.losses import NLLLoss
    from sft_exp.training.memory import NoMemoryStrategy
    from sft_exp.training.trainer import SFTTrainer

    loader = ModelLoader(
        tokenizer=str(asset_path("tokenizer")),
        init_config={
            "model_type": "qwen2",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
    )
    tokenizer = loader.load_tokenizer()
    settings = DataSettings(
        sources=[
            {
                "path": str(asset_path("demo/train.jsonl")),
                "name": "demo",
                "max_samples": 16,
                "eval_path": str(asset_path("demo/eval.jsonl")),
                "eval_max_samples": 8,
            }
        ],
        max_length=64,
        assistant_only_loss=True,
        seed=0,
    )
    data = prepare_datasets(settings, tokenizer)
    model = loader.load_model(tokenizer)
    evaluation = TaskEvaluation(
        {"heldout": {"path": "heldout", "limit": 4, "max_new_tokens": 4, "scorer": "exact_match"}},
        output_dir=str(tmp_path / "evals"),
    )
    evaluation.use_heldout(data.heldout_examples)
    trainer = SFTTrainer(
        model=model,
        loss=NLLLoss(),
        memory=NoMemoryStrategy(),
        source_names=data.source_names,
        optimizer_factory=lambda params: torch.optim.AdamW(params, lr=1e-3),
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=SFTCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[RunRecorder(tmp_path), StopOnSignal()],
        evaluators=[evaluation],
        output_dir=str(tmp_path / "checkpoints"),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_steps=10,
        seed=0,
    )
    scores = trainer.evaluate()
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    assert "eval_heldout/exact_match" in scores and "eval_loss" in scores
    assert (tmp_path / "evals" / "heldout" / "step-0.jsonl").is_file()


class CountSteps(TrainerCallback):
    """A callback of the user's: writes how many optimizer steps it saw."""

    def __init__(self, out: str):
        self.out, self.steps = Path(out), 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.out.write_text(str(self.steps))


def test_a_callback_is_added_and_removed_by_config_alone(tmp_path):
    from sft_exp.train import run

    counted = tmp_path / "steps.txt"
    run(
        compose(
            [
                *tiny_run(steps=2, train_rows=16, save_steps=5),
                "evals=none",
                f"run_dir={tmp_path}",
                "+callbacks.count._target_=tests.test_construction.CountSteps",
                f"+callbacks.count.out={counted}",
                "~callbacks.run_recorder",
            ]
        )
    )
    assert counted.read_text() == "2"
    assert not (tmp_path / "metrics.jsonl").exists()  # the run recorder was removed
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
