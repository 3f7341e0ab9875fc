"""Versions share unchanged files on disk, and no version can change another through them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.store.sharing import Shared, share_file
from tests.needs import need
from tests.store.test_store import install, release

SERVICE_USER = 65534  # nobody: the agent's service user in this test
WEIGHTS = os.urandom(64 * 1024)
TOKENIZER, NEW_TOKENIZER = b'{"vocab": 1}', b'{"vocab": 2}'


@pytest.fixture
def store_root() -> Iterator[Path]:
    # Not pytest's tmp_path: its parents are closed to other users, and one test acts
    # as the agent's (non-root) service user.
    folder = Path(tempfile.mkdtemp(prefix="store-sharing-"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=True)


def two_versions(store: ModelStore) -> None:
    install(
        store, release("1.0.0", {"w.bin": [WEIGHTS], "t.json": [TOKENIZER]}), [WEIGHTS, TOKENIZER]
    )
    install(
        store, release("1.1.0", {"w.bin": [WEIGHTS], "t.json": [NEW_TOKENIZER]}), [NEW_TOKENIZER]
    )


def folder(store: ModelStore, version: str) -> Path:
    return store.version("m", version).path


def test_an_unchanged_file_is_one_inode_and_the_new_version_adds_only_its_changes(
    store_root: Path,
) -> None:
    store = ModelStore(store_root)
    two_versions(store)
    old, new = folder(store, "1.0.0") / "w.bin", folder(store, "1.1.0") / "w.bin"
    assert old.stat().st_ino == new.stat().st_ino
    assert new.read_bytes() == WEIGHTS
    usage = store.disk_usage("m")  # sizes include each version's own .release.json
    assert usage["1.0.0"].adds == usage["1.0.0"].size > len(WEIGHTS)
    assert usage["1.1.0"].adds == usage["1.1.0"].size - len(WEIGHTS)
    assert usage["1.1.0"].adds < 1024


def test_installed_files_are_read_only_and_the_store_never_opens_one_for_writing(
    store_root: Path,
) -> None:
    store = ModelStore(store_root)
    install(
        store, release("1.0.0", {"w.bin": [WEIGHTS], "t.json": [TOKENIZER]}), [WEIGHTS, TOKENIZER]
    )
    versions = str(store.models_dir / "m" / "versions")
    writes: list[str] = []
    watching = [True]

    def watch(event: str, args: tuple[object, ...]) -> None:
        if watching and event == "open" and str(args[0]).startswith(versions):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR)
            ):
                writes.append(str(args[0]))

    sys.addaudithook(watch)
    install(
        store, release("1.1.0", {"w.bin": [WEIGHTS], "t.json": [NEW_TOKENIZER]}), [NEW_TOKENIZER]
    )
    for version in ("1.0.0", "1.1.0"):
        for name in ("w.bin", "t.json"):
            mode = (folder(store, version) / name).stat().st_mode
            assert mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0, (version, name)
    store.rollback("m")
    store.gc()
    watching.clear()  # audit hooks cannot be removed: this one goes quiet
    assert writes == []


def test_the_service_user_cannot_change_one_version_through_another(store_root: Path) -> None:
    store = ModelStore(store_root)
    two_versions(store)
    if os.geteuid() == 0:  # root ignores file modes: hand the store to a service user
        for path in [store_root, *store_root.rglob("*")]:
            os.chown(path, SERVICE_USER, SERVICE_USER, follow_symlinks=False)
    # The shell, not Python: the test's interpreter may live where that user cannot read.
    user = SERVICE_USER if os.geteuid() == 0 else None
    done = subprocess.run(
        ["/bin/sh", "-c", 'printf EVIL 1<>"$1"', "sh", str(folder(store, "1.1.0") / "w.bin")],
        user=user,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0, "writing a shared file through the new version succeeded"
    assert "Permission denied" in done.stderr
    assert (folder(store, "1.0.0") / "w.bin").read_bytes() == WEIGHTS


def test_rollback_and_gc_keep_the_bytes_another_version_still_links(store_root: Path) -> None:
    store = ModelStore(store_root)
    two_versions(store)
    install(store, release("1.2.0", {"w.bin": [WEIGHTS], "t.json": [TOKENIZER]}), [])
    report = store.gc()  # 1.0.0, where the weights were first written, is neither pointer
    assert report.removed_versions == ["m 1.0.0"]
    assert (folder(store, "1.2.0") / "w.bin").read_bytes() == WEIGHTS
    assert store.rollback("m") == "1.1.0"
    active = store.active("m")
    assert active is not None
    assert (active.path / "w.bin").read_bytes() == WEIGHTS
    assert (active.path / "t.json").read_bytes() == NEW_TOKENIZER
    store.gc()
    assert store.versions("m") == ["1.1.0"]
    assert (active.path / "w.bin").stat().st_nlink == 1
    assert (active.path / "w.bin").read_bytes() == WEIGHTS


def test_a_file_on_another_file_system_is_cloned_or_copied_read_only(tmp_path: Path) -> None:
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        need(False, "needs /dev/shm on a file system other than the test's")
    with tempfile.NamedTemporaryFile(dir="/dev/shm", delete=False) as handle:
        handle.write(WEIGHTS)
    source = Path(handle.name)
    try:
        how = share_file(source, tmp_path / "w.bin")
    finally:
        source.unlink()
    assert how in (Shared.CLONED, Shared.COPIED)
    assert (tmp_path / "w.bin").read_bytes() == WEIGHTS
    assert (tmp_path / "w.bin").stat().st_mode & 0o222 == 0
