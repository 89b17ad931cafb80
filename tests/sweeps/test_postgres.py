"""Two sweep processes share one study in a real PostgreSQL server (tests/services/postgres.sh starts it;
the test skips where PostgreSQL is absent and cannot be installed): together they run exactly n_trials,
no trial number twice."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest

from tests.helpers import REPO
from tests.sweeps.helpers import TEST_ENV, TINY, summary, sweep_command, trials

SCRIPT = REPO / "tests" / "services" / "postgres.sh"


@pytest.fixture(scope="module")
def postgres_url():
    pytest.importorskip("psycopg", reason="the PostgreSQL driver: pip install 'psycopg[binary]'")
    folder = tempfile.mkdtemp(prefix="sft_exp_pg_", dir="/tmp")  # the server's user must reach it
    started = subprocess.run(["bash", str(SCRIPT), "start", folder], capture_output=True, text=True, timeout=600)
    if started.returncode == 77:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", folder], timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.multiprocess
def test_two_sweep_processes_sharing_one_study_run_exactly_n_trials(postgres_url, tmp_path):
    common = [
        *TINY,
        "hydra.sweeper.n_trials=6",
        "hydra.sweeper.sampler.type=random",
        f"hydra.sweeper.storage={postgres_url}",
        "hydra.sweeper.study_name=shared",
    ]
    procs = [
        subprocess.Popen(
            sweep_command(*common, f"hydra.sweep.dir={tmp_path / name}"),
            cwd=REPO,
            env=TEST_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    study = trials(tmp_path / "a", study_name="shared", storage=postgres_url)
    complete = [t.number for t in study if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    ran = {name: {int(p.name) for p in (tmp_path / name).iterdir() if p.name.isdigit()} for name in ("a", "b")}
    assert ran["a"] and ran["b"], "both processes ran trials"
    assert not ran["a"] & ran["b"] and ran["a"] | ran["b"] == set(complete)  # each number once, in one folder
    for name, numbers in ran.items():
        assert all(summary(tmp_path / name / str(n))["status"] == "completed" for n in numbers)
    never_run = [t for t in study if t.state.name != "COMPLETE"]
    assert all(t.user_attrs.get("sft_exp_surplus") for t in never_run)  # asked by both at once, never launched
