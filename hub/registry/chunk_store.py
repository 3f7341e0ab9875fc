"""Content-addressed chunks under <root>/chunks: each written once, shared by releases."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.atomic import write_atomic
from edge_agent.protocol import ChunkRef, FileEntry, chunk_path
from hub.registry.chunking import Chunk, chunk_file


@dataclass
class StoreStats:
    """What a release added: the bytes a device that holds the previous one must fetch."""

    chunks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0
    seen: set[str] = field(default_factory=set)


def store_file(root: Path, relative: str, path: Path, stats: StoreStats) -> FileEntry:
    """Chunk `path`, write the chunks the repository lacks, return its manifest entry."""

    def keep(chunk: Chunk, data: memoryview) -> None:
        if chunk.sha256 in stats.seen:
            return
        stats.seen.add(chunk.sha256)
        stats.chunks += 1
        dest = root / chunk_path(chunk.sha256)
        # A chunk's name is its hash, so one of the right size was written whole by rename.
        if dest.is_file() and dest.stat().st_size == chunk.size:
            return
        write_atomic(dest, data)
        stats.new_chunks += 1
        stats.new_bytes += chunk.size

    chunked = chunk_file(path, keep)
    return FileEntry(
        path=relative,
        size=chunked.size,
        sha256=chunked.sha256,
        chunks=tuple(ChunkRef(sha256=c.sha256, size=c.size) for c in chunked.chunks),
    )
