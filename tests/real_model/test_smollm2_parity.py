"""On a real pretrained model (SmolLM2-135M-Instruct) and its tokenizer: the first-step loss, mean token
accuracy and entropy equal TRL SFTTrainer's, from raw prompt-completion rows through each side's own data
pipeline (TRL masks the prompt; so does sft_exp). Conversational prompt-completion rows are not compared:
TRL also trains the "\n" after <|im_end|>, sft_exp stops at <|im_end|> (as its assistant masks do)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

trl = pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from sft_exp.data import DataSettings, SFTCollator, prepare_datasets  # noqa: E402
from sft_exp.training.forward import sft_forward  # noqa: E402
from sft_exp.training.losses import NLLLoss  # noqa: E402

pytestmark = pytest.mark.real_model

QA = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Name a primary colour.", "Red is a primary colour."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Translate 'thank you' into Spanish.", "Gracias."),
    ("What is 12 times 12?", "12 times 12 is 144."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


def prompt_completion_rows() -> list[dict]:
    """Prompt-completion rows: TRL trains the completion (+ EOS) only, as sft_exp does by default."""
    return [{"prompt": f"Question: {q}\nAnswer:", "completion": f" {a}"} for q, a in QA]


def test_first_step_loss_accuracy_entropy_equal_trl(smollm2_folder, smollm2_tokenizer, tmp_path):
    rows = prompt_completion_rows()
    data_file = tmp_path / "pc.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))

    model = AutoModelForCausalLM.from_pretrained(str(smollm2_folder), dtype=torch.float32)
    ours_model = copy.deepcopy(model)  # TRL patches the forward of the model it is given
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        per_device_train_batch_size=len(rows),
        report_to=[],
        use_cpu=True,
        max_length=None,
        dataset_num_proc=None,
    )
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=smollm2_tokenizer
    )
    trl_batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))  # all rows: order-free
    trainer.model.train()  # TRL files metrics under "train" only in training mode (no dropout in this model)
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, dict(trl_batch)).item()
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    settings = DataSettings(sources=[{"path": str(data_file)}], eval_split_size=0, seed=0)
    data = prepare_datasets(settings, smollm2_tokenizer, cache_dir=str(tmp_path / "cache"))
    assert len(data.train) == len(rows)
    ours = {tuple(r["input_ids"]): r["labels"] for r in data.train}
    theirs = {
        tuple(ids[m == 1].tolist()): lab[m == 1].tolist()
        for ids, lab, m in zip(trl_batch["input_ids"], trl_batch["labels"], trl_batch["attention_mask"])
    }
    assert ours == theirs  # same tokens, same masks (prompt masked, completion and its <|im_end|> trained)

    batch = SFTCollator(smollm2_tokenizer.pad_token_id)([dict(r) for r in data.train])
    with torch.no_grad():
        out = sft_forward(ours_model, dict(batch), NLLLoss(chunk_size=64))
    n = out.num_supervised
    assert 0.2 < trl_metrics["mean_token_accuracy"] < 1  # a real model on real text: metrics that could differ
    assert out.loss.item() == pytest.approx(trl_loss, abs=1e-4)
    assert (out.num_correct / n).item() == pytest.approx(trl_metrics["mean_token_accuracy"], abs=1e-4)
    # Entropy: relative 1e-4. sft_exp.training.lm_head's float32 chunked entropy is 7.5e-5 (relative) off a float64
    # reference on this 49k vocabulary (TRL's: 4e-6); measured 1.537506 vs TRL 1.537620, float64 1.537622.
    assert (out.entropy_sum / n).item() == pytest.approx(trl_metrics["entropy"], rel=1e-4)
