"""Letting go of the resident pages of memory-mapped Arrow files, so RSS does not grow with the data.

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
import sys
import time

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
