"""Content-defined chunking: deterministic, local to edits, lossless."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from hub.registry.chunking import (
    AVG_CHUNK_BYTES,
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    chunk_file,
    iter_chunks,
)

FILE_BYTES = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random.Random(7).randbytes(FILE_BYTES)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_chunks_are_deterministic_and_bounded(tmp_path: Path, blob: bytes) -> None:
    first = list(iter_chunks(write(tmp_path / "a", blob)))
    second = list(iter_chunks(write(tmp_path / "b", blob)))
    assert first == second
    assert FILE_BYTES // (4 * AVG_CHUNK_BYTES) < len(first) < FILE_BYTES // MIN_CHUNK_BYTES
    assert all(MIN_CHUNK_BYTES <= c.size <= MAX_CHUNK_BYTES for c in first[:-1])
    assert 0 < first[-1].size <= MAX_CHUNK_BYTES


def test_chunks_concatenate_back_to_the_file(tmp_path: Path, blob: bytes) -> None:
    path = write(tmp_path / "f", blob)
    pieces: list[bytes] = []
    result = chunk_file(path, lambda chunk, data: pieces.append(bytes(data)))
    assert b"".join(pieces) == blob
    assert result.size == FILE_BYTES
    assert result.sha256 == hashlib.sha256(blob).hexdigest()
    offset = 0
    for chunk, piece in zip(result.chunks, pieces, strict=True):
        assert chunk.offset == offset
        assert chunk.sha256 == hashlib.sha256(piece).hexdigest()
        offset += chunk.size


def test_an_edit_in_the_middle_changes_only_nearby_chunks(tmp_path: Path, blob: bytes) -> None:
    middle = FILE_BYTES // 2
    edited = blob[:middle] + b"a fine-tuned layer" + blob[middle + 100 :]
    before = chunk_file(write(tmp_path / "before", blob)).chunks
    after = chunk_file(write(tmp_path / "after", edited)).chunks
    old = {c.sha256 for c in before}
    changed = [c for c in after if c.sha256 not in old]
    assert 1 <= len(changed) <= 2
    assert sum(c.size for c in changed) <= 2 * MAX_CHUNK_BYTES
    assert all(abs(c.offset - middle) <= MAX_CHUNK_BYTES for c in changed)
    # Chunks before the edit are identical, chunks after it are the same bytes shifted.
    assert [c.sha256 for c in after if c.offset + c.size < middle] == [
        c.sha256 for c in before if c.offset + c.size < middle
    ]


def test_small_and_empty_files(tmp_path: Path) -> None:
    empty = chunk_file(write(tmp_path / "empty", b""))
    assert empty.chunks == ()
    assert empty.sha256 == hashlib.sha256(b"").hexdigest()
    small = chunk_file(write(tmp_path / "small", b"tokenizer"))
    assert [(c.offset, c.size) for c in small.chunks] == [(0, 9)]
