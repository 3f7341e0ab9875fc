"""glibc allocator settings for a long-running server process.

Measured with the `small` model (bench/inference.py and a 25-request soak): with glibc's
defaults the agent settled 60-80 MB above a plain single-threaded generate loop, all of
it freed-but-kept memory. Two causes, two settings:

- every thread that allocates gets its own malloc arena, and memory freed in one is not
  reused by another: one arena for the process;
- glibc raises its mmap threshold after the first large free, so later KV-cache buffers
  land in the heap between small Python objects and fragment it: a fixed 1 MiB threshold
  keeps large buffers in their own mappings, returned to the system when freed.

Together the agent settles about 20-30 MB above the plain loop. The price: the prefill's
largest buffer (logits for every prompt position, 12.6 MB for a 64-token prompt on a
49k vocabulary) is mapped afresh for each request, a few milliseconds of page faults in
the time to first token; a 32 MiB threshold avoids them but lets the footprint creep up
by ~25 MB over a few dozen requests. On an edge box the flat footprint wins. No-ops off
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator() -> bool:
    """Call before threads start allocating; returns whether the settings took."""
    libc = _libc()
    if libc is None:
        return False
    arenas = libc.mallopt(M_ARENA_MAX, 1) == 1
    threshold = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    return bool(arenas and threshold)


def release_free_memory() -> None:
    """Hand memory freed after a large step (loading a model) back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def peak_resident_mib() -> float:
    """This process's peak resident memory (VmHWM), in MiB; 0 where /proc is missing."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
