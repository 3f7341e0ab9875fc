"""The model store on its own: chunks, assembly, activation, rollback, GC, floors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from edge_agent.protocol import ChunkRef, FileEntry, ReleaseManifest
from edge_agent.store import CorruptChunk, ModelStore, VersionMissing


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def release(version: str, files: dict[str, list[bytes]]) -> ReleaseManifest:
    entries = []
    for path, chunks in files.items():
        whole = b"".join(chunks)
        refs = tuple(ChunkRef(sha256=sha(c), size=len(c)) for c in chunks)
        entries.append(FileEntry(path=path, size=len(whole), sha256=sha(whole), chunks=refs))
    return ReleaseManifest(model="m", version=version, files=tuple(entries))


def install(store: ModelStore, manifest: ReleaseManifest, chunks: list[bytes]) -> None:
    for data in chunks:
        if sha(data) in store.missing_chunks(manifest):
            store.put_chunk(sha(data), data)
    store.assemble(manifest)
    store.activate(manifest.model, manifest.version)


A, B, C = b"a" * 1000, b"b" * 500, b"c" * 700


def test_install_activate_and_reuse_chunks_of_installed_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = release("1.0.0", {"w.bin": [A, B], "t.json": [C]})
    assert set(store.missing_chunks(v1)) == {sha(A), sha(B), sha(C)}
    install(store, v1, [A, B, C])
    active = store.active("m")
    assert active is not None and active.version == "1.0.0"
    assert (active.path / "w.bin").read_bytes() == A + B
    store.gc()
    assert not any(p.is_file() for p in store.chunks_dir.rglob("*"))  # served by v1's files now
    v2 = release("1.1.0", {"w.bin": [A, b"new"], "t.json": [C]})
    assert store.missing_chunks(v2) == {sha(b"new"): 3}
    install(store, v2, [b"new"])
    assert (store.active("m").path / "w.bin").read_bytes() == A + b"new"  # type: ignore[union-attr]
    assert store.previous("m").version == "1.0.0"  # type: ignore[union-attr]


def test_a_chunk_that_does_not_match_its_hash_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(CorruptChunk):
        store.put_chunk(sha(A), B)
    assert not store.chunk_file(sha(A)).exists()


def test_damaged_stored_chunk_stops_assembly_with_nothing_installed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    v1 = release("1.0.0", {"w.bin": [A]})
    store.put_chunk(sha(A), A)
    store.chunk_file(sha(A)).write_bytes(B)  # bit rot after download
    with pytest.raises(CorruptChunk):
        store.assemble(v1)
    assert store.versions("m") == []
    assert list(store.staging_dir.iterdir()) == []


def test_rollback_and_restore(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    install(store, release("1.0.0", {"w": [A]}), [A])
    install(store, release("2.0.0", {"w": [B]}), [B])
    assert store.rollback("m") == "1.0.0"
    assert store.active("m").version == "1.0.0"  # type: ignore[union-attr]
    assert store.previous("m") is None
    with pytest.raises(VersionMissing):
        store.rollback("m")
    store.gc()
    assert store.versions("m") == ["1.0.0"]


def test_activate_refuses_an_incomplete_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    (store.models_dir / "m" / "versions" / "9.0.0").mkdir(parents=True)
    with pytest.raises(VersionMissing):
        store.activate("m", "9.0.0")


def test_gc_removes_partial_state_and_keeps_pending_chunks(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    install(store, release("1.0.0", {"w": [A]}), [A])
    (store.staging_dir / "m-half").mkdir(parents=True)
    (store.models_dir / "m" / "active.tmp-link").symlink_to("versions/1.0.0")
    pending = release("2.0.0", {"w": [A, B]})
    store.put_chunk(sha(B), B)
    store.put_chunk(sha(C), C)  # not needed by anything
    report = store.gc(keep=[pending])
    assert report.removed_staging == 1
    assert store.chunk_file(sha(B)).is_file()
    assert not store.chunk_file(sha(C)).exists()
    assert not (store.models_dir / "m" / "active.tmp-link").exists()


def test_floors_only_rise(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.raise_floor("m", "1.2.0")
    store.raise_floor("m", "1.1.0")
    assert str(store.floor("m")) == "1.2.0"
    assert ModelStore(tmp_path).floor("m") is not None  # persisted
