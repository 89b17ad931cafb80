"""Batched generation and the TaskEvaluation evaluator on a real tiny model: same outputs as one prompt
at a time, stop strings, truncation counted, per-example jsonl, errors naming task and row."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from sft_exp.errors import ConfigError, DataError
from sft_exp.evaluation import TaskEvaluation
from sft_exp.evaluation.generate import generate, render_prompt
from sft_exp.evaluation.tasks import load_examples, task_settings
from tests.evaluation.helpers import demo_eval_file, tiny_model, write_jsonl


def _demo_prompt_ids(tokenizer, count):
    examples = load_examples("demo", task_settings("demo", {"path": demo_eval_file(), "limit": count}))
    return [render_prompt(tokenizer, e["prompt"]) for e in examples]


def test_batched_greedy_equals_one_prompt_at_a_time(model, tokenizer):
    ids = _demo_prompt_ids(tokenizer, 8)
    assert len({len(row) for row in ids}) > 3  # prompts of many lengths: left padding matters
    side = tokenizer.padding_side
    batched = generate(model, tokenizer, ids, max_new_tokens=8, batch_size=8)
    one_by_one = generate(model, tokenizer, ids, max_new_tokens=8, batch_size=1)
    assert [g[0].text for g in batched] == [g[0].text for g in one_by_one]
    assert [g[0].num_tokens for g in batched] == [g[0].num_tokens for g in one_by_one]
    assert tokenizer.padding_side == side


def test_stop_strings_and_eos_end_a_generation_and_the_rest_are_counted_truncated(tokenizer):
    model = tiny_model(tokenizer)
    ids = _demo_prompt_ids(tokenizer, 8)
    free = generate(model, tokenizer, ids, max_new_tokens=8, batch_size=8)
    assert all(g[0].truncated != g[0].stopped for g in free)
    assert sum(g[0].truncated for g in free) >= 4  # a random model seldom says EOS
    # A stop string: a printable word the model writes in the first generation.
    first = model.generate(torch.tensor([ids[0]]), max_new_tokens=8, do_sample=False)[0, len(ids[0]) :].tolist()
    word = next(tokenizer.decode([t]) for t in first[2:] if tokenizer.decode([t]).strip().isalnum())
    stopped = generate(model, tokenizer, ids, max_new_tokens=8, batch_size=8, stop=[word])
    for (plain,), (cut,) in zip(free, stopped):
        has_word = word in plain.text
        assert cut.text == (plain.text[: plain.text.index(word)] if has_word else plain.text)
        assert (cut.stopped, cut.truncated) == ((True, False) if has_word else (plain.stopped, plain.truncated))
    assert stopped[0][0].stopped
    # EOS: make the model's third token of the first prompt an end-of-sequence token.
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, first[2]]
    ended = generate(model, tokenizer, ids, max_new_tokens=8, batch_size=8)
    assert ended[0][0].stopped and ended[0][0].num_tokens == 2
    assert ended[0][0].text == tokenizer.decode(first[:2], skip_special_tokens=True)


def test_task_metrics_and_per_example_jsonl(tmp_path, model, tokenizer, caplog):
    ids = _demo_prompt_ids(tokenizer, 4)
    outputs = [g[0].text for g in generate(model, tokenizer, ids, max_new_tokens=6)]
    rows = [json.loads(line) for line in open(demo_eval_file()).readlines()[:4]]
    for row, output in zip(rows[:2], outputs):  # two references are what the model says: exact match 0.5
        row["messages"][-1]["content"] = output
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    evaluation = TaskEvaluation(
        {"t": {"path": path, "max_new_tokens": 6, "batch_size": 3}},
        output_dir=str(tmp_path / "evals"),
        print_examples=3,
    )
    model.train()
    with caplog.at_level(logging.INFO):
        metrics = evaluation.evaluate(model, tokenizer, step=7, final=True)
    assert model.training  # left in the mode it was in
    model.eval()
    assert metrics["eval_t/exact_match"] == 0.5
    assert metrics["eval_t/truncated"] == 4.0
    assert metrics["eval_t/output_tokens"] == 6.0
    saved = [json.loads(line) for line in (tmp_path / "evals" / "t" / "step-7.jsonl").read_text().splitlines()]
    assert [r["index"] for r in saved] == [0, 1, 2, 3]
    assert [r["output"] for r in saved] == outputs
    assert [r["score"] for r in saved] == [1.0, 1.0, 0.0, 0.0]
    assert (
        saved[0]["prompt"] == rows[0]["messages"][:-1] and saved[3]["reference"] == rows[3]["messages"][-1]["content"]
    )
    assert all(r["truncated"] and not r["stopped"] for r in saved)
    printed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("t ")]
    assert len(printed) == 3 and "[truncated]" in printed[0]


def test_sampling_gives_pass_at_k_and_leaves_the_training_rng_alone(tmp_path, model, tokenizer):
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "abc", "completion": "x"}, {"prompt": "de", "completion": "y"}]
    )
    spec = {
        "path": path,
        "do_sample": True,
        "num_samples": 4,
        "temperature": 1.0,
        "max_new_tokens": 3,
        "scorer": {"_target_": "sft_exp.evaluation.scorers.RegexMatch", "pattern": "."},
    }
    evaluation = TaskEvaluation({"s": spec}, output_dir=str(tmp_path))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    metrics = evaluation.evaluate(model, tokenizer, step=0)
    assert torch.equal(torch.rand(3), expected)
    assert set(metrics) == {
        "eval_s/regex_match",
        "eval_s/truncated",
        "eval_s/output_tokens",
        "eval_s/pass@1",
        "eval_s/pass@4",
    }
    rows = [json.loads(line) for line in (tmp_path / "s" / "step-0.jsonl").read_text().splitlines()]
    assert all(len(r["samples"]) == 4 for r in rows)
    per_row = [sum(s["score"] for s in r["samples"]) / 4 for r in rows]
    assert metrics["eval_s/pass@1"] == pytest.approx(sum(per_row) / 2)
    assert metrics["eval_s/truncated"] == sum(s["truncated"] for r in rows for s in r["samples"])
    again = TaskEvaluation({"s": spec}, output_dir=str(tmp_path / "again")).evaluate(model, tokenizer, step=0)
    assert again == metrics  # seeded: the same samples every evaluation


def _raising_scorer(output, reference):
    raise ValueError("cannot parse")


def test_a_scorer_that_raises_names_task_row_and_scorer(tmp_path, model, tokenizer):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc", "completion": "x"}])
    target = f"{__name__}._raising_scorer"
    evaluation = TaskEvaluation(
        {"t": {"path": path, "max_new_tokens": 2, "scorer": {"_target_": target}}}, output_dir=str(tmp_path)
    )
    with pytest.raises(
        ConfigError, match=rf"evals.t \(.*p.jsonl\), row 0: the scorer .*{target}.* raised ValueError: cannot parse"
    ):
        evaluation.evaluate(model, tokenizer, step=0)


def test_a_prompt_longer_than_the_context_names_task_and_row(tmp_path, tokenizer):
    model = tiny_model(tokenizer, max_positions=64)
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": "short", "completion": "x"}, {"prompt": "long " * 80, "completion": "y"}]
    )
    evaluation = TaskEvaluation({"t": {"path": path, "max_new_tokens": 8}}, output_dir=str(tmp_path))
    with pytest.raises(
        DataError, match=r"evals.t \(.*p.jsonl\), row 1: the prompt is \d+ tokens.*context of 64 tokens"
    ):
        evaluation.evaluate(model, tokenizer, step=0)
    assert not (tmp_path / "t").exists()  # checked before anything generates
