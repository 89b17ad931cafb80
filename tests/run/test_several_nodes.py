"""Several nodes: two torchrun launchers (2 nodes x 1 process, c10d rendezvous) form one job equal to one process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO, compose
from tests.run.test_distributed import ONE_PROCESS, PER_RANK, PROCESS_ENV, SHORT, _free_port, _losses


@pytest.mark.slow  # two launchers and their rendezvous: over a minute on 2 shared cores
@pytest.mark.multiprocess
def test_two_nodes_of_one_process_equal_one_process(tmp_path):
    from sft_exp.train import run

    single = tmp_path / "single"
    run(compose([*SHORT, *ONE_PROCESS, f"run_dir={single}"]))
    endpoint = f"127.0.0.1:{_free_port()}"
    # What each node of a 2-node job runs (here both on this machine); rendezvous decides the node ranks.
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        "--rdzv-id=two-nodes",
        "-m",
        "sft_exp",
        *SHORT,
        *PER_RANK,
        f"hydra.run.dir={tmp_path}/rank${{oc.env:RANK}}",
    ]
    logs = [tmp_path / f"node{n}.out" for n in (0, 1)]
    nodes = [
        subprocess.Popen(launcher, cwd=REPO, env=PROCESS_ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    try:
        codes = [node.wait(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-2000:] for log in logs)
    expected, _ = _losses(single)
    got, rows = _losses(tmp_path / "rank0")
    assert sorted(got) == [1, 2, 3, 4]
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    assert not (tmp_path / "rank1").exists()  # one run folder for the job
