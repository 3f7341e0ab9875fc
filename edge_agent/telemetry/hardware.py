"""The coarse hardware class a report carries: cores, memory and accelerator buckets.

Buckets, not numbers: an exact core count or memory size (e.g. 15.6 GiB usable) could
single out a machine; a bucket is shared by many.
"""

from __future__ import annotations

import os
from pathlib import Path

from edge_agent.protocol.telemetry import Accelerator, CoresBucket, HardwareClass, MemoryBucket

MEMINFO = Path("/proc/meminfo")
_CORES = (
    (1, CoresBucket.C1),
    (2, CoresBucket.C2),
    (4, CoresBucket.C3_4),
    (8, CoresBucket.C5_8),
    (16, CoresBucket.C9_16),
    (32, CoresBucket.C17_32),
)
_GIB = 1 << 30
_MEMORY = (
    (2, MemoryBucket.UNDER_2_GIB),
    (4, MemoryBucket.GIB_2_4),
    (8, MemoryBucket.GIB_4_8),
    (16, MemoryBucket.GIB_8_16),
    (32, MemoryBucket.GIB_16_32),
    (64, MemoryBucket.GIB_32_64),
)


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def total_memory_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemTotal from /proc/meminfo, or None where there is none (not Linux)."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def cores_bucket(cores: int) -> CoresBucket:
    for upper, found in _CORES:
        if cores <= upper:
            return found
    return CoresBucket.C33_UP


def memory_bucket(total_bytes: int | None) -> MemoryBucket:
    if total_bytes is None:
        return MemoryBucket.UNKNOWN
    for upper_gib, found in _MEMORY:
        # Usable memory is a little under the nominal size, so a 16 GiB box is "8-16GiB".
        if total_bytes < upper_gib * _GIB:
            return found
    return MemoryBucket.GIB_64_UP


def accelerator(execution_provider: str) -> Accelerator:
    """The configured (or resolved) execution provider; "auto" and others are unknown."""
    try:
        return Accelerator(execution_provider.lower())
    except ValueError:
        return Accelerator.UNKNOWN


def hardware_class(execution_provider: str, meminfo: Path = MEMINFO) -> HardwareClass:
    return HardwareClass(
        cores=cores_bucket(usable_cores()),
        memory=memory_bucket(total_memory_bytes(meminfo)),
        accelerator=accelerator(execution_provider),
    )
