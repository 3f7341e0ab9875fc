"""Inference keeps running whatever the update side does (DESIGN.md promise 1).

Damaged state files, a damaged store, a file name the file system cannot hold, a full disk
(a real 4 MiB tmpfs, out of bytes or out of inodes): each is refused or rolled back, the
state machine ends in IDLE through the table's FAILED edges, the active version serves, and
later updates and rollbacks work.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hub.registry.repository as hub_repository
from edge_agent.updates.errors import InstallFailed, NoRoom, RepositoryError, StateDamaged
from edge_agent.updates.health import check_model
from edge_agent.updates.machine import Phase, StateFile
from edge_agent.updates.source import pin_root
from tests.agent_process import model_ids, serve_and_list_models
from tests.needs import need
from tests.updates.conftest import Fleet

BIN = Path(sys.executable).parent / "edge-agent"


def agent_env(fleet: Fleet, **extra: str) -> dict[str, str]:
    return {**os.environ, "EDGE_AGENT__STORE__DIR": str(fleet.device), **extra}


def state_of(fleet: Fleet) -> StateFile:
    return StateFile(fleet.device / "update-state.json")


def active_version(fleet: Fleet) -> str | None:
    active = fleet.store.active("tiny")
    return active.version if active else None


# --- a damaged update state file -------------------------------------------------------

DAMAGED_STATES = {
    "truncated JSON": b'{"schema_version": 1, "phase": "instal',
    "not UTF-8": b"\xff\xfe\x00garbage",
    "a JSON list": b"[1, 2, 3]",
    "unknown schema": json.dumps({"schema_version": 99}).encode(),
    "unknown phase": json.dumps({"schema_version": 1, "phase": "exploding"}).encode(),
}


@pytest.mark.parametrize("content", DAMAGED_STATES.values(), ids=DAMAGED_STATES.keys())
def test_a_damaged_state_file_is_moved_aside_and_updates_go_on(
    fleet: Fleet, content: bytes
) -> None:
    fleet.update()
    state = state_of(fleet)
    state.path.write_bytes(content)
    with pytest.raises(StateDamaged, match=r"moved aside to .*keeps serving"):
        fleet.manager().recover()
    assert not state.path.exists()
    [aside] = fleet.device.glob("update-state.json.damaged-*")
    assert aside.read_bytes() == content  # kept for a post-mortem
    assert fleet.manager().recover() is None  # afresh: IDLE
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    assert fleet.update().version == "1.1.0"


def test_serve_serves_through_a_damaged_state_file(fleet: Fleet) -> None:
    fleet.update()
    state_of(fleet).path.write_bytes(b"{")
    served = serve_and_list_models(BIN, ["--model", "tiny"], agent_env(fleet))
    assert model_ids(served) == ["tiny"]
    assert "update state was unreadable" in served.stderr and "moved aside" in served.stderr
    assert served.returncode == 0, served.stderr


def test_an_update_or_rollback_moves_a_damaged_state_file_aside(fleet: Fleet) -> None:
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    state_of(fleet).path.write_bytes(b"{")
    assert fleet.update().version == "1.1.0"
    state_of(fleet).path.write_bytes(b"[]")
    assert fleet.manager().rollback("tiny") == "1.0.0"
    assert len(list(fleet.device.glob("update-state.json.damaged-*"))) == 2


# --- a failed activation takes the (ACTIVATING, FAILED) edge -------------------------------


def crash_at(fleet: Fleet, checkpoint: str) -> None:
    """Run `edge-agent update` and SIGKILL it at the named checkpoint."""
    env = agent_env(fleet, EDGE_AGENT_FAULT=checkpoint)
    done = subprocess.run(
        [str(BIN), "update", "tiny", "--from", str(fleet.repo.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr


def test_a_failed_activation_rolls_back_instead_of_staying_activating(fleet: Fleet) -> None:
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    crash_at(fleet, "state-saved:3")  # saves: started, downloaded, installed
    assert state_of(fleet).load().phase is Phase.ACTIVATING
    # The store is damaged while the agent is down: the new version's record is unreadable.
    (fleet.device / "models/tiny/versions/1.1.0/.release.json").write_text("{")

    with pytest.raises(InstallFailed, match=r"tiny 1\.1\.0 failed \(activation failed"):
        fleet.manager().recover()
    record = state_of(fleet).load()
    assert record.history[-3:] == [
        "installing-installed->activating",
        "activating-failed->rolling_back",
        "rolling_back-rolled_back->idle",
    ]
    assert record.phase is Phase.IDLE
    assert fleet.manager().recover() is None  # the next restart finds nothing to resume
    assert active_version(fleet) == "1.0.0"
    assert fleet.store.versions("tiny") == ["1.0.0"]
    assert "1.1.0" not in record.failed.get("tiny", [])  # the device failed, not the release
    assert fleet.update().version == "1.1.0"


def test_serve_serves_the_active_version_after_a_failed_activation(fleet: Fleet) -> None:
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    crash_at(fleet, "state-saved:3")
    (fleet.device / "models/tiny/versions/1.1.0/.release.json").write_text("{")
    served = serve_and_list_models(BIN, ["--model", "tiny"], agent_env(fleet))
    assert model_ids(served) == ["tiny"]
    assert "rolled back to 1.0.0" in served.stderr
    assert state_of(fleet).load().phase is Phase.IDLE
    assert active_version(fleet) == "1.0.0"


# --- names the file system cannot hold -----------------------------------------------------


def publish_with_a_long_name(fleet: Fleet, version: str, name_bytes: int) -> None:
    """Sign a release one of whose files has a name of `name_bytes` bytes, as a hub on a
    file system with longer names could. The hub lists the folder with its real names;
    this renames one entry in the listing it signs."""
    real = hub_repository.list_model_files
    long_name = "t" * (name_bytes - len(".json")) + ".json"

    def listing(folder: Path) -> list[tuple[str, Path]]:
        files = real(folder)
        return [(long_name if rel == "test_model.json" else rel, path) for rel, path in files]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_repository, "list_model_files", listing)
        fleet.repo.publish(fleet.variant(f"v{version}", top_k=3), "tiny", version)


def test_a_file_name_too_long_for_this_disk_is_refused_before_anything_is_written(
    fleet: Fleet,
) -> None:
    fleet.update()
    publish_with_a_long_name(fleet, "1.1.0", 300)
    before = fleet.snapshot()
    state_before = state_of(fleet).path.read_bytes()
    with pytest.raises(NoRoom, match="300 bytes, the limit here is 255; nothing was written"):
        fleet.update()
    assert fleet.snapshot() == before
    assert state_of(fleet).path.read_bytes() == state_before
    assert not [p for p in (fleet.device / "chunks").rglob("*") if p.is_file()]
    # Inference and later updates are unaffected.
    check_model(fleet.store.active("tiny").path)  # type: ignore[union-attr]
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.2.0")
    assert fleet.update().version == "1.2.0"


def test_the_cli_says_why_a_long_name_is_refused_and_serve_still_serves(fleet: Fleet) -> None:
    fleet.update()
    publish_with_a_long_name(fleet, "1.1.0", 300)
    done = subprocess.run(
        [str(BIN), "update", "tiny", "--from", str(fleet.repo.root)],
        env=agent_env(fleet),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "file system cannot hold" in done.stderr and "Traceback" not in done.stderr
    served = serve_and_list_models(BIN, ["--model", "tiny"], agent_env(fleet))
    assert model_ids(served) == ["tiny"] and served.returncode == 0, served.stderr


# --- a real small disk -------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs with 200 inodes, mounted for this test and unmounted after."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=200", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        need(False, f"cannot mount a tmpfs here (needs root and mount rights): {done.stderr}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def small_fleet(fleet: Fleet, small_disk: Path) -> Fleet:
    """The fleet's device, its store on the small disk, with 1.0.0 installed."""
    device = small_disk / "device"
    pin_root(device / "trust", fleet.repo.trusted_root_path())
    on_disk = Fleet(fleet.repo, device, fleet.model_dir, fleet.tmp)
    assert on_disk.update().version == "1.0.0"
    return on_disk


def fill_bytes(folder: Path, leave: int) -> Path:
    """Allocate all but `leave` bytes of the file system with one real (not sparse) file."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with filler.open("wb") as out:
        os.posix_fallocate(out.fileno(), 0, max(free - leave, 1))
    return filler


def fill_inodes(folder: Path, leave: int) -> Path:
    """Create empty files until the file system has only `leave` inodes left (while bytes
    stay free): enough to save the update state, too few to assemble a version."""
    spare = folder / "inode-filler"
    spare.mkdir()
    for n in range(100_000):
        try:
            (spare / str(n)).touch()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            for k in range(n - leave, n):
                (spare / str(k)).unlink()
            return spare
    raise AssertionError("the file system never ran out of inodes")


def publish_bigger(fleet: Fleet, version: str, extra_files: int = 3) -> None:
    """A release with `extra_files` new files, each its own chunk (about 40 KB apiece)."""
    folder = fleet.variant(f"big-{version}", top_k=5)
    for n in range(extra_files):
        (folder / f"extra-{n}.bin").write_bytes(os.urandom(40_000))
    fleet.repo.publish(folder, "tiny", version)


def test_a_full_disk_is_refused_before_the_download(small_fleet: Fleet) -> None:
    fleet = small_fleet
    publish_bigger(fleet, "1.1.0")
    filler = fill_bytes(fleet.device, leave=300_000)  # less than the release needs
    before = fleet.snapshot()
    with pytest.raises(NoRoom, match=r"not enough disk space to download and install tiny 1\.1"):
        fleet.update()
    after = fleet.snapshot()
    assert after == before
    assert not [p for p in (fleet.device / "chunks").rglob("*") if p.is_file()]
    assert state_of(fleet).load().phase is Phase.IDLE
    filler.unlink()
    assert fleet.update().version == "1.1.0"


def test_a_disk_that_fills_during_the_download_is_refused_before_the_install(
    small_fleet: Fleet,
) -> None:
    fleet = small_fleet
    publish_bigger(fleet, "1.1.0")
    filled: list[Path] = []

    def fill_when_done(done: int, total: int) -> None:
        if done == total and not filled:  # another program takes the disk meanwhile
            filled.append(fill_bytes(fleet.device, leave=100_000))

    with (
        fleet.source() as source,
        pytest.raises(NoRoom, match=r"not enough disk space to install tiny 1\.1\.0"),
    ):
        fleet.manager().update(source, "tiny", progress=fill_when_done)
    record = state_of(fleet).load()
    assert record.phase is Phase.IDLE
    assert record.history[-1] == "installing-failed->idle"
    assert active_version(fleet) == "1.0.0"
    assert fleet.store.versions("tiny") == ["1.0.0"]
    downloaded = [p for p in (fleet.device / "chunks").rglob("*") if p.is_file()]
    assert len(downloaded) >= 3  # kept for the retry
    filled[0].unlink()
    retry = fleet.update()
    assert (retry.version, retry.fetched_bytes) == ("1.1.0", 0)


def test_a_disk_out_of_inodes_mid_install_rolls_back_and_everything_works_after(
    small_fleet: Fleet,
) -> None:
    """No check can foresee every full disk (here: inodes, while bytes are free). The OS
    error is caught, the install takes the FAILED edge, and serve, rollback and later
    updates work."""
    fleet = small_fleet
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    assert fleet.update().version == "1.1.0"
    publish_bigger(fleet, "1.2.0")
    spares: list[Path] = []

    def take_the_inodes(done: int, total: int) -> None:
        if done == total and not spares:
            spares.append(fill_inodes(fleet.device, leave=3))

    with (
        fleet.source() as source,
        pytest.raises(InstallFailed, match=r"No space left on device.*1\.1\.0 stays active"),
    ):
        fleet.manager().update(source, "tiny", progress=take_the_inodes)
    record = state_of(fleet).load()
    assert (record.phase, record.history[-1]) == (Phase.IDLE, "installing-failed->idle")
    assert record.last_error is not None and "No space left on device" in record.last_error
    assert not any((fleet.device / "staging").iterdir())
    assert active_version(fleet) == "1.1.0"

    # Telemetry off: its transparency log cannot be written on this full disk either, and
    # that is not what this test is about.
    quiet = agent_env(fleet, EDGE_AGENT__TELEMETRY__POLICY="off")
    served = serve_and_list_models(BIN, ["--model", "tiny"], quiet)
    assert model_ids(served) == ["tiny"] and served.returncode == 0, served.stderr
    back = subprocess.run(
        [str(BIN), "rollback", "tiny"], env=agent_env(fleet), capture_output=True, text=True
    )
    assert back.returncode == 0 and "1.0.0 is active again" in back.stdout, back.stderr

    shutil.rmtree(spares[0])
    fleet.repo.publish(fleet.variant("v3", top_k=9), "tiny", "1.3.0")
    assert fleet.update().version == "1.3.0"


# --- a bad chunk costs that chunk, not the whole download ------------------------------------


def test_one_damaged_chunk_is_fetched_again_alone(fleet: Fleet) -> None:
    fleet.update()
    publish_bigger(fleet, "1.1.0", extra_files=4)
    damaged: list[Path] = []

    def damage_one(done: int, total: int) -> None:
        if done == total and not damaged:
            chunks = sorted(p for p in (fleet.device / "chunks").rglob("*") if p.is_file())
            chunks[0].write_bytes(b"bit rot")
            damaged.append(chunks[0])

    with fleet.source() as source, pytest.raises(RepositoryError, match="is damaged"):
        fleet.manager().update(source, "tiny", progress=damage_one)
    kept = sorted(p for p in (fleet.device / "chunks").rglob("*") if p.is_file())
    assert len(kept) >= 4 and damaged[0] not in kept
    good = {p.name: p.read_bytes() for p in kept}
    retry = fleet.update()
    assert retry.version == "1.1.0"
    # Only the damaged chunk travelled again: fetched bytes are its size alone.
    manifest = fleet.store.version("tiny", "1.1.0").manifest
    assert retry.fetched_bytes == manifest.unique_chunks()[damaged[0].name]
    assert all(manifest.unique_chunks()[name] == len(data) for name, data in good.items())
