"""Content-defined chunking of model files (FastCDC).

Cut points depend on the bytes around them, not on offsets, so an edit moves only the
chunks near it: a fine-tune that touches a quarter of the layers moves about a quarter
of the bytes, and a release with a new tokenizer and unchanged weights moves almost
none. Devices then fetch only the chunks they do not hold yet.

Files are memory-mapped, never read whole: a 200 MB model costs page cache, not heap.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fastcdc import fastcdc

MIN_CHUNK_BYTES = 256 * 1024
AVG_CHUNK_BYTES = 1024 * 1024
MAX_CHUNK_BYTES = 4 * 1024 * 1024


class Chunk(NamedTuple):
    offset: int
    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkedFile:
    size: int
    sha256: str
    chunks: tuple[Chunk, ...]


# Called with each chunk and a view of its bytes, valid only during the call.
ChunkSink = Callable[[Chunk, memoryview], None]


def iter_chunks(path: Path) -> Iterator[Chunk]:
    """Yield the chunks of `path` in file order; an empty file has none."""
    with _mapped(path) as view:
        yield from (chunk for chunk, _data in _cut(view))


def chunk_file(path: Path, on_chunk: ChunkSink | None = None) -> ChunkedFile:
    """Chunk `path` in one pass, hashing the file and each chunk as it goes."""
    whole = hashlib.sha256()
    chunks: list[Chunk] = []
    with _mapped(path) as view:
        for chunk, data in _cut(view):
            whole.update(data)
            chunks.append(chunk)
            if on_chunk is not None:
                on_chunk(chunk, data)
        size = len(view)
    return ChunkedFile(size=size, sha256=whole.hexdigest(), chunks=tuple(chunks))


def _cut(view: memoryview) -> Iterator[tuple[Chunk, memoryview]]:
    if not view:
        return
    cuts = fastcdc(
        view,
        min_size=MIN_CHUNK_BYTES,
        avg_size=AVG_CHUNK_BYTES,
        max_size=MAX_CHUNK_BYTES,
        fat=False,  # we slice the mapping ourselves instead of copying every chunk
    )
    try:
        for cut in cuts:
            offset, size = int(cut.offset), int(cut.length)
            with view[offset : offset + size] as data:
                yield Chunk(offset, size, hashlib.sha256(data).hexdigest()), data
    finally:
        cuts.close()  # drops fastcdc's own slices so the mapping can close


@contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    with path.open("rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:  # mmap refuses empty files
            yield memoryview(b"")
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapping:
            view = memoryview(mapping)
            try:
                yield view
            finally:
                view.release()
