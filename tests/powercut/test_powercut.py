"""A power cut loses nothing that was promised (DESIGN.md promises 4 and 6).

kill -9 cannot show a missing fsync: the kernel still holds the process's writes and
writes them out later. A power cut loses them. These tests run the real code in a child
process on a FUSE filesystem of our own (tests/powercut/forgetful_fs.py) that keeps every
write, create, rename, unlink and mkdir in memory and counts as durable only what an
fsync/fdatasync made durable: a file's bytes by syncing the file, a folder's entries by
syncing the folder (the strict POSIX reading, as LazyFS models it). The "cut" freezes the
filesystem, drops everything unsynced, kills the process and hands the durable image to the
checks, which reopen it with the real code as a rebooted device would.

Why FUSE: device-mapper (dm-snapshot, dm-log-writes) is not available on these machines, a
loop-device snapshot would keep the page cache's writes (unmounting flushes them), and an
LD_PRELOAD layer misses what SQLite does through mmap and its own system calls. A FUSE
filesystem sees every operation the kernel passes on and needs root and /dev/fuse only;
without them the tests are skipped and say why.

Each test fails when the fsync it guards is removed (checked by hand: the outbox or the
hub's SQLite at synchronous=NORMAL, make_dirs without its parent's fsync, the store's
folders made with plain mkdir, the transparency log without fsync).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.protocol import ChunkRef, FileEntry, ReleaseManifest
from tests.powercut.conftest import ForgetfulDisk, start_worker

Mount = Callable[..., ForgetfulDisk]
WAIT_S = 60.0


def read_until(worker: subprocess.Popen[str], done: Callable[[list[str]], bool]) -> list[str]:
    """The worker's lines until `done` says enough (the cut comes while it keeps writing)."""
    assert worker.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + WAIT_S
    while not done(lines):
        line = worker.stdout.readline()
        assert line, f"the worker stopped after {len(lines)} lines (exit {worker.poll()})"
        lines.append(line.strip())
        assert time.monotonic() < deadline, "the worker is too slow"
    return lines


def rest(worker: subprocess.Popen[str]) -> list[str]:
    """What the worker printed before it died (operations that returned before the cut)."""
    assert worker.stdout is not None
    with worker.stdout:
        return worker.stdout.read().split("\n")


def words(lines: list[str], prefix: str) -> set[str]:
    return {w for line in lines if line.startswith(prefix + " ") for w in line.split()[1:]}


# --- promise 6: the agent's outbox ------------------------------------------------------


def test_every_message_put_returned_for_is_in_the_outbox_after_a_power_cut(
    forgetful_disk: Mount,
) -> None:
    from edge_agent.sync.outbox import Outbox

    disk = forgetful_disk()
    worker = start_worker(disk.mount, "outbox")
    lines = read_until(worker, lambda seen: len(seen) >= 120)
    image = disk.cut(worker)
    lines += rest(worker)
    stored, acked = words(lines, "stored"), words(lines, "acked")
    assert acked and len(stored) >= 100

    with Outbox(image / "agent" / "outbox.sqlite3") as box:
        queued = {item.message_id for item in box.pending(limit=1_000_000)}
    lost = sorted(stored - acked - queued)
    assert not lost, f"{len(lost)} of {len(stored)} stored messages lost: {lost[:5]}"


# --- promise 6: the hub's ingest --------------------------------------------------------


def test_every_batch_the_ingest_writer_committed_is_stored_after_a_power_cut(
    forgetful_disk: Mount,
) -> None:
    from sqlalchemy import select

    from hub import db
    from hub.fleet.models import ReceivedMessage

    disk = forgetful_disk()
    worker = start_worker(disk.mount, "ingest")
    lines = read_until(worker, lambda seen: len(seen) >= 15)
    image = disk.cut(worker)
    acknowledged = words(lines + rest(worker), "stored")
    assert len(acknowledged) >= 300

    engine = db.make_engine(db.sqlite_url(image / "hub" / "hub.sqlite3"))
    try:
        with engine.connect() as connection:
            rows = set(connection.execute(select(ReceivedMessage.message_id)).scalars())  # type: ignore[call-overload]
    finally:
        engine.dispose()
    lost = sorted(acknowledged - rows)
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged messages lost"


# --- promise 7's log, which promise 6 covers: no message goes out unlogged ---------------


def test_every_record_the_transparency_log_returned_for_survives_a_power_cut(
    forgetful_disk: Mount,
) -> None:
    from edge_agent.telemetry.transparency import TransparencyLog

    disk = forgetful_disk()
    worker = start_worker(disk.mount, "transparency")
    lines = read_until(worker, lambda seen: len(seen) >= 50)
    image = disk.cut(worker)
    recorded = {line.removeprefix("recorded ") for line in lines + rest(worker) if line}
    log = TransparencyLog(image / "telemetry" / "transparency.jsonl", max_bytes=1 << 24)
    kept = {entry.payload.decode() for entry in log.entries()}
    lost = sorted(recorded - kept)
    assert not lost, f"{len(lost)} of {len(recorded)} logged records lost: {lost[:5]}"


# --- promise 4: an install is atomic ----------------------------------------------------


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_release(folder: Path, version: str, files: dict[str, list[bytes]]) -> ReleaseManifest:
    """A release as the update manager holds it once downloaded: manifest and chunks."""
    entries = []
    (folder / "chunks").mkdir(parents=True)
    for path, chunks in files.items():
        whole = b"".join(chunks)
        for chunk in chunks:
            (folder / "chunks" / sha(chunk)).write_bytes(chunk)
        refs = tuple(ChunkRef(sha256=sha(c), size=len(c)) for c in chunks)
        entries.append(FileEntry(path=path, size=len(whole), sha256=sha(whole), chunks=refs))
    manifest = ReleaseManifest(model="tiny", version=version, files=tuple(entries))
    (folder / "manifest.json").write_text(manifest.model_dump_json())
    return manifest


def pointer_version(store: Path, name: str) -> str | None:
    link = store / "models" / "tiny" / name
    return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None


def assert_whole(store: Path, manifest: ReleaseManifest) -> None:
    """The version folder holds exactly the manifest's files, each with its hash."""
    folder = store / "models" / "tiny" / "versions" / manifest.version
    found = {
        p.relative_to(folder).as_posix(): sha(p.read_bytes())
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".release.json"
    }
    assert found == {entry.path: entry.sha256 for entry in manifest.files}, manifest.version
    recorded = ReleaseManifest.model_validate_json((folder / ".release.json").read_bytes())
    assert recorded == manifest


def install_points(tmp: Path, release: Path, seed: Path | None) -> list[str]:
    """Every `checkpoint:n` an install passes (counted on a plain folder), and "end"."""
    scratch = tmp / "count"
    if seed is not None:
        subprocess.run(["cp", "-a", str(seed), str(scratch)], check=True)
    else:
        scratch.mkdir()
    log = tmp / "counts.json"
    worker = start_worker(
        scratch, "install", str(release), EDGE_AGENT_FAULT="count", EDGE_AGENT_FAULT_LOG=str(log)
    )
    rest(worker)
    assert worker.wait() == 0
    counts = json.loads(log.read_text())
    points = [f"{name}:{n}" for name, total in sorted(counts.items()) for n in range(1, total + 1)]
    return [*points, "end"]


def cut_everywhere(
    forgetful_disk: Mount,
    tmp: Path,
    release: Path,
    old: ReleaseManifest | None,
    new: ReleaseManifest,
    seed: Path | None,
) -> int:
    points = install_points(tmp, release, seed)
    assert len(points) >= 5
    for point in points:
        disk = forgetful_disk(seed)
        fault = {} if point == "end" else {"EDGE_AGENT_FAULT": point}
        worker = start_worker(disk.mount, "install", str(release), **fault)
        worker.wait(timeout=WAIT_S)
        image = disk.cut(worker) / "store"
        said = rest(worker)
        active = pointer_version(image, "active")
        if point == "end":
            assert f"activated {new.version}" in said
            assert active == new.version, "the activated version was lost"
        else:
            assert active in {old and old.version, new.version}, point
        for manifest in (old, new):
            if manifest is not None and manifest.version in {
                active,
                pointer_version(image, "previous"),
            }:
                assert_whole(image, manifest)
    return len(points)


SHARED = b"s" * 3000


@pytest.mark.slow
def test_a_first_install_cut_at_any_point_leaves_nothing_or_the_whole_version(
    forgetful_disk: Mount, tmp_path: Path
) -> None:
    v1 = write_release(
        tmp_path / "v1",
        "1.0.0",
        {
            "model.onnx": [SHARED, b"a" * 2000],
            "tokenizer/vocab.json": [b'{"a": 1}'],
            "genai_config.json": [b"{}"],
        },
    )
    cut_everywhere(forgetful_disk, tmp_path, tmp_path / "v1", None, v1, seed=None)


@pytest.mark.slow
def test_an_upgrade_cut_at_any_point_leaves_the_old_or_the_new_version_whole(
    forgetful_disk: Mount, tmp_path: Path
) -> None:
    from edge_agent.store import ModelStore

    v1_files = {
        "model.onnx": [SHARED, b"a" * 2000],
        "tokenizer/vocab.json": [b'{"a": 1}'],
        "genai_config.json": [b'{"same": "in both"}'],  # v2 shares it (a hard link)
    }
    v1 = write_release(tmp_path / "v1", "1.0.0", v1_files)
    v2 = write_release(
        tmp_path / "v2",
        "2.0.0",
        {
            "model.onnx": [SHARED, b"b" * 2500],
            "tokenizer/vocab.json": [b'{"b": 2}'],
            "tokenizer/merges.txt": [b"m" * 100],
            "genai_config.json": [b'{"same": "in both"}'],
        },
    )
    seed = tmp_path / "seed"
    store = ModelStore(seed / "store")  # v1 installed and active, all of it on the disk
    for sha256 in store.missing_chunks(v1):
        store.put_chunk(sha256, (tmp_path / "v1" / "chunks" / sha256).read_bytes())
    store.assemble(v1)
    store.activate("tiny", "1.0.0")
    store.gc()
    cut_everywhere(forgetful_disk, tmp_path, tmp_path / "v2", v1, v2, seed=seed)
