"""How sft_exp shares the machine it runs on: CPU threads (trainer.threads) and the resident pages of
memory-mapped Arrow files. Every command applies the same policy (`prepare` before torch loads).

## Threads

CPU threads that share a busy machine instead of fighting it (trainer.threads).

Measured on 2 cores, 200 steps of the default run (train_runtime_s; trainer.threads=2 forced where said):

  | wait policy | idle | beside `yes > /dev/null`, 2 threads | beside it, threads chosen here (1) |
  |---|---|---|---|
  | OpenMP's own (spin a while, then sleep) | 7.2 s | 30.5 s | 11.5 s |
  | PASSIVE (sleep at once) | 18.4 s | 13.5 s | 11.1 s |

Spinning threads fight a busy core; sleeping ones cost 2.5x on an idle machine. So the thread count is
the CPUs this process may use minus those other processes keep busy at start (at least one), and threads
wait passively only when the machine is shared at start. Kept free of torch: `prepare` must run before
torch (and its OpenMP runtime) loads.

## Mapped pages

Letting go of the resident pages of memory-mapped Arrow files, so RSS does not grow with the data.

datasets reads its Arrow cache files through read-only memory maps. Every page a pass reads stays
in the process's RSS until the file is unmapped: tokenizing 1.6M rows reads about 0.9 GB of raw
rows, and peak RSS grew by that much. The pages are clean copies of the file, so the kernel could
reclaim them under pressure, but until then they count against the process (ru_maxrss, container
limits). `release_arrow_pages` tells the kernel the process no longer needs them
(madvise MADV_DONTNEED): the mapping stays valid, and a later read faults the page back in from
the page cache (a read-only file mapping is never written, so nothing is lost). Linux only; a
no-op elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
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


MADV_DONTNEED = 4  # linux/mman.h
ARROW_SUFFIX = ".arrow"

_madvise = None
_last_release = 0.0
# Reading /proc/self/maps costs a few ms with torch loaded; a map batch reads ~0.5 MB of raw rows.
RELEASE_INTERVAL_S = 0.5


def _libc_madvise():
    global _madvise
    if _madvise is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.madvise.restype = ctypes.c_int
        _madvise = libc.madvise
    return _madvise


def arrow_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's read-only mappings of Arrow files (from /proc/self/maps)."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            # address perms offset dev inode [path]; read-only ("r--"): never written, safe to drop
            if len(fields) == 6 and fields[5].rstrip("\n").endswith(ARROW_SUFFIX) and fields[1].startswith("r-"):
                start, end = (int(value, 16) for value in fields[0].split("-"))
                ranges.append((start, end))
    return ranges


def release_arrow_pages() -> int:
    """Drop the resident pages of read-only Arrow file mappings from RSS; returns how many bytes were mapped."""
    if not sys.platform.startswith("linux"):
        return 0
    madvise = _libc_madvise()
    released = 0
    for start, end in arrow_mappings():
        if madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
    return released


def release_arrow_pages_now_and_then() -> None:
    """`release_arrow_pages`, at most every RELEASE_INTERVAL_S seconds (for a loop over batches)."""
    global _last_release
    now = time.monotonic()
    if now - _last_release >= RELEASE_INTERVAL_S:
        release_arrow_pages()
        _last_release = now
