"""CPU threads that share a busy machine instead of fighting it (trainer.threads).

Measured on 2 cores, 200 steps of the default run (train_runtime_s; trainer.threads=2 forced where said):

  | wait policy | idle | beside `yes > /dev/null`, 2 threads | beside it, threads chosen here (1) |
  |---|---|---|---|
  | OpenMP's own (spin a while, then sleep) | 7.2 s | 30.5 s | 11.5 s |
  | PASSIVE (sleep at once) | 18.4 s | 13.5 s | 11.1 s |

Spinning threads fight a busy core; sleeping ones cost 2.5x on an idle machine. So the thread count is
the CPUs this process may use minus those other processes keep busy at start (at least one), and threads
wait passively only when the machine is shared at start. Kept free of torch: `prepare` must run before
torch (and its OpenMP runtime) loads.
"""
from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: taskset, cgroups cpusets, SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cpus(samples: int = 5, interval_s: float = 0.04) -> int:
    """Runnable processes other than this one right now (/proc/stat procs_running, median of a few
    samples), capped by the CPUs there are. 0 where /proc is not available."""
    counts = []
    for i in range(samples):
        try:
            with open("/proc/stat") as f:
                running = next((int(line.split()[1]) for line in f if line.startswith("procs_running")), 1)
        except (OSError, ValueError):
            return 0
        counts.append(max(running - 1, 0))  # this process is running while it reads
        if i + 1 < samples:
            time.sleep(interval_s)
    return min(sorted(counts)[len(counts) // 2], os.cpu_count() or 1)


def choose_threads(requested: int | None, busy: int | None = None) -> tuple[int, str]:
    """(threads, why): `requested` when set, else the usable CPUs that are not busy (at least one)."""
    cpus = usable_cpus()
    if requested:
        return int(requested), "trainer.threads"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    busy = busy_cpus() if busy is None else busy
    threads = max(1, min(cpus, cpus - busy))
    return threads, f"{cpus} usable CPUs, {busy} busy with other processes at start"


def prepare(requested: int | None) -> int:
    """Before torch loads: the thread count, and passive waiting where the machine is shared at start
    (unless the environment chose a policy). Returns the count."""
    busy = busy_cpus()
    if busy:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threads, why = choose_threads(requested, busy)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    log.info("cpu threads: %d (%s; set trainer.threads to choose)", threads, why)
    return threads


def apply(threads: int) -> None:
    """After torch loads: the same count for torch's intra-op pool (OMP_NUM_THREADS may have been set late)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
