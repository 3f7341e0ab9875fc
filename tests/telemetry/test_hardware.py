"""The hardware class is a bucket, never an exact figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.protocol import Accelerator, CoresBucket, MemoryBucket
from edge_agent.telemetry.hardware import (
    accelerator,
    cores_bucket,
    hardware_class,
    memory_bucket,
    total_memory_bytes,
)

GIB = 1 << 30


@pytest.mark.parametrize(
    ("cores", "expected"),
    [(1, CoresBucket.C1), (2, CoresBucket.C2), (3, CoresBucket.C3_4), (8, CoresBucket.C5_8),
     (12, CoresBucket.C9_16), (32, CoresBucket.C17_32), (128, CoresBucket.C33_UP)],
)  # fmt: skip
def test_cores_bucket(cores: int, expected: CoresBucket) -> None:
    assert cores_bucket(cores) is expected


@pytest.mark.parametrize(
    ("total", "expected"),
    [(None, MemoryBucket.UNKNOWN), (GIB, MemoryBucket.UNDER_2_GIB),
     (int(15.5 * GIB), MemoryBucket.GIB_8_16), (31 * GIB, MemoryBucket.GIB_16_32),
     (512 * GIB, MemoryBucket.GIB_64_UP)],
)  # fmt: skip
def test_memory_bucket(total: int | None, expected: MemoryBucket) -> None:
    assert memory_bucket(total) is expected


def test_meminfo_is_read_and_the_provider_mapped(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  100 kB\nMemTotal:       16252928 kB\n")
    assert total_memory_bytes(meminfo) == 16252928 * 1024
    assert total_memory_bytes(tmp_path / "missing") is None
    assert accelerator("CUDA") is Accelerator.CUDA
    assert accelerator("auto") is Accelerator.UNKNOWN
    found = hardware_class("dml", meminfo)
    assert (found.memory, found.accelerator) == (MemoryBucket.GIB_8_16, Accelerator.DML)
