"""kill -9 at every checkpoint of an install: afterwards the old or the new version is
active and generates, a restart completes or undoes the update, and GC leaves nothing
half-written behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.updates.errors import HealthCheckFailed, Refused
from edge_agent.updates.health import check_model
from tests.updates.conftest import Fleet

BIN = Path(sys.executable).parent / "edge-agent"


def run_update(
    fleet: Fleet, fault: str, log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EDGE_AGENT__STORE__DIR": str(fleet.device),
        "EDGE_AGENT_FAULT": fault,
        "EDGE_AGENT_FAULT_LOG": str(log or ""),
    }
    return subprocess.run(
        [str(BIN), "update", "tiny", "--from", str(fleet.repo.root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def checkpoints(fleet: Fleet, tmp: Path) -> list[tuple[str, int]]:
    """Every (checkpoint, nth pass) of one uninterrupted run, on a throwaway copy."""
    scratch = Fleet(fleet.repo, tmp / "count-device", fleet.model_dir, tmp)
    # symlinks=True: `active` and `previous` stay links; copied as folders, the count run
    # failed at activation and the points after it were never exercised.
    shutil.copytree(fleet.device, scratch.device, symlinks=True)
    log = tmp / "counts.json"
    run_update(scratch, "count", log)
    counts = json.loads(log.read_text())
    return [(name, n) for name, total in sorted(counts.items()) for n in range(1, total + 1)]


def assert_clean(fleet: Fleet) -> None:
    store = fleet.store
    store.gc()
    assert not store.staging_dir.exists() or not any(store.staging_dir.iterdir())
    assert not [p for p in store.chunks_dir.rglob("*") if p.is_file()]
    home = store.models_dir / "tiny"
    assert not list(home.glob("*.tmp-link"))
    kept = {v.version for v in (store.active("tiny"), store.previous("tiny")) if v}
    assert set(store.versions("tiny")) == kept
    assert not list(fleet.device.rglob("*.tmp"))


def crash_everywhere(
    fleet_factory: Callable[[], Fleet], old: str | None, new: str, expect_failure: bool
) -> int:
    """Kill at every checkpoint of the update; return how many points were exercised."""
    probe = fleet_factory()
    points = checkpoints(probe, probe.tmp)
    for name, nth in points:
        fleet = fleet_factory()
        result = run_update(fleet, f"{name}:{nth}")
        assert result.returncode == -signal.SIGKILL, (name, nth, result.stderr)
        active = fleet.store.active("tiny")
        assert (active.version if active else None) in {old, new}, (name, nth)
        if active is not None and not (expect_failure and active.version == new):
            check_model(active.path)  # whichever is active loads and generates
        # (a broken release is active between its activation and the restart's rollback)
        manager = fleet.manager()  # the restart
        try:
            manager.recover()
            fleet.update()
        except (HealthCheckFailed, Refused):  # refused: it already failed here before
            assert expect_failure, (name, nth)
        final = fleet.store.active("tiny")
        assert final is not None
        assert final.version == (old if expect_failure else new), (name, nth)
        check_model(final.path)
        assert_clean(fleet)
    return len(points)


@pytest.mark.slow
def test_kill_at_every_point_of_install_upgrade_and_failed_upgrade(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from edge_agent.updates.source import pin_root
    from hub.registry.repository import ReleaseRepository

    base = tmp_path_factory.mktemp("crash")
    repo = ReleaseRepository.create(base / "repo", base / "keys")
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    template = Fleet(repo, base / "template", tiny_model_dir, base)
    good = template.variant("v2", top_k=7)
    broken = template.variant("broken")
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    runs = iter(range(10**6))

    def device_at(version: str | None) -> Callable[[], Fleet]:
        def make() -> Fleet:
            tmp = base / f"run-{next(runs)}"
            tmp.mkdir()
            fleet = Fleet(repo, tmp / "device", tiny_model_dir, tmp)
            pin_root(fleet.device / "trust", repo.trusted_root_path())
            if version is not None:
                fleet.update(version)
            return fleet

        return make

    points = crash_everywhere(device_at(None), None, "1.0.0", expect_failure=False)
    repo.publish(good, "tiny", "1.1.0")
    points += crash_everywhere(device_at("1.0.0"), "1.0.0", "1.1.0", expect_failure=False)
    repo.publish(broken, "tiny", "1.2.0")
    points += crash_everywhere(device_at("1.1.0"), "1.1.0", "1.2.0", expect_failure=True)
    print(f"crash points exercised: {points}")
    assert points >= 50
