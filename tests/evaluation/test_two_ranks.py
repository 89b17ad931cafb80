"""Two ranks (gloo, CPU): prompts split across ranks and gathered give what one process gives, and
only rank 0 writes the jsonl. 5 prompts: one rank gets fewer and pads its shard."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch.multiprocessing as mp

from sft_exp.evaluation import TaskEvaluation
from tests.evaluation.helpers import tiny_model, write_jsonl


def _rank(rank: int, world: int, port: int, prompts: str, out: str, queue) -> None:
    import torch.distributed as dist
    from transformers import AutoTokenizer

    from sft_exp.paths import asset_path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(asset_path("tokenizer")))
        evaluation = TaskEvaluation(
            {"t": {"path": prompts, "max_new_tokens": 5, "batch_size": 2}}, output_dir=os.path.join(out, f"rank{rank}")
        )
        queue.put((rank, evaluation.evaluate(tiny_model(tokenizer), tokenizer, step=3)))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing transformers: ~1 min on 2 busy cores
@pytest.mark.multiprocess
def test_two_ranks_score_like_one_process(tmp_path, tokenizer):
    prompts = write_jsonl(
        tmp_path / "p.jsonl", [{"prompt": f"item {i} " * (i + 1), "completion": "x"} for i in range(5)]
    )
    single = TaskEvaluation(
        {"t": {"path": prompts, "max_new_tokens": 5, "batch_size": 2}}, output_dir=str(tmp_path / "single")
    ).evaluate(tiny_model(tokenizer), tokenizer, step=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_rank, args=(r, 2, port, prompts, str(tmp_path), queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=240) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert results[0] == results[1] == single
    expected = (tmp_path / "single" / "t" / "step-3.jsonl").read_text()
    assert (tmp_path / "rank0" / "t" / "step-3.jsonl").read_text() == expected
    assert not (tmp_path / "rank1").exists()
    assert [json.loads(line)["index"] for line in expected.splitlines()] == [0, 1, 2, 3, 4]
