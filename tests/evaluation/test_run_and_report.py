"""A real run folder: sft_exp's trainer trains a tiny model with TaskEvaluation as an evaluator (scored
before, during and after training), then the report shows the task columns, plots and changed examples."""

from __future__ import annotations

import json
from functools import partial

import torch

from sft_exp.evaluation import TaskEvaluation
from sft_exp.evaluation.generate import render_prompt
from tests.evaluation.helpers import write_jsonl

PAIRS = [("Reverse 123", "321"), ("Reverse 45", "54"), ("Sort 312", "123"), ("Max of 719", "9")]


def _rows(tokenizer):
    rows = []
    for question, answer in PAIRS:
        prompt = render_prompt(tokenizer, [{"role": "user", "content": question}])
        completion = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt + completion
        rows.append(
            {
                "input_ids": ids,
                "labels": [-100] * len(prompt) + completion,
                "position_ids": list(range(len(ids))),
                "source_ids": [0] * len(ids),
            }
        )
    return rows * 8


def test_run_folder_scores_before_during_after_and_the_report(tmp_path, tokenizer):
    import datasets
    from transformers import AutoConfig, AutoModelForCausalLM

    from sft_exp.data import SFTCollator
    from sft_exp.run.folder import write_json
    from sft_exp.run.recorder import RunRecorder
    from sft_exp.tools.report import report
    from sft_exp.train import train_and_evaluate
    from sft_exp.training.trainer import SFTTrainer

    torch.manual_seed(0)
    config = AutoConfig.for_model(
        "qwen2",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    prompts = write_jsonl(
        tmp_path / "tasks.jsonl",
        [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in PAIRS],
    )
    run = tmp_path / "run"
    evaluation = TaskEvaluation({"toy": {"path": prompts, "max_new_tokens": 6}}, output_dir=str(run / "evals"))
    trainer = SFTTrainer(
        model=model,
        train_dataset=datasets.Dataset.from_list(_rows(tokenizer)),
        eval_dataset=datasets.Dataset.from_list(_rows(tokenizer)[:4]),
        data_collator=SFTCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        optimizer_factory=partial(torch.optim.AdamW, lr=2e-2),
        callbacks=[RunRecorder(run)],
        evaluators=[evaluation],
        output_dir=str(run / "checkpoints"),
        max_steps=30,
        per_device_train_batch_size=8,
        logging_steps=10,
        eval_steps=15,
        save_steps=1000,
        warmup_steps=0,
    )
    summary = train_and_evaluate(trainer, None)
    write_json(run / "summary.json", {**summary, "status": "completed"})

    assert sorted(p.name for p in (run / "evals" / "toy").iterdir()) == [
        "step-0.jsonl",
        "step-15.jsonl",
        "step-30.jsonl",
    ]
    assert summary["eval_toy/exact_match_before"] == 0.0
    assert summary["eval_toy/exact_match"] >= 0.5  # it learned the answers and to stop
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_toy/exact_match" in r] == [0, 15, 30]
    assert all("eval_loss" in r for r in rows if "eval_toy/exact_match" in r)  # one eval row, loss and scores

    markdown = report(run)
    assert "eval_toy/exact_match" in markdown.splitlines()[0]
    assert (run / "eval_toy_exact_match.png").is_file() and (run / "eval_toy_truncated.png").is_file()
    assert "### toy: step 0 -> 30, mean score 0 -> " in markdown
    final = [json.loads(line) for line in (run / "evals" / "toy" / "step-30.jsonl").read_text().splitlines()]
    for row in final:
        if row["score"] == 1.0:  # every example that became right is listed with its before and after
            assert f"| {row['index']} | `{PAIRS[row['index']][0]}` | `{row['reference']}` | 0: " in markdown
