"""Agent self-update driven by the fleet, on real processes: `edge-hub serve` with its
managed Mosquitto, a device enrolled with a token and run by the A/B launcher (holding the
API socket), and agent releases signed into the hub's repository as `edge-agent`.

The releases' install scripts are the test's (the real wheelhouse build is
test_installer.py's, slow); everything around them is the product's: TUF-verified fetch,
the desired state, the user's pin, the switch, the health check, the fallback and the
reports the hub stores and `edge-hub device show` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.installed import launcher as launcher_module
from edge_agent.installed.launcher import SlotState, save_state
from edge_agent.installed.release import AGENT_RELEASE
from hub import db
from hub.fleet import registry
from hub.registry.agent_release import publish_installer
from hub.registry.repository import ReleaseRepository
from tests.fleet.processes import active_on_hub, wait_for
from tests.fleet.test_hub_and_agent import Device, Hub, enrolled_on_first_release, running_hub
from tests.installed.fleet_slots import CRASHES, GOOD, make_slot, state
from tests.installed.test_handover import Load

pytestmark = pytest.mark.timeout(420)

# The release's own install script: makes the slot as the real installer does (the
# version file last), with an agent that is this checkout's, or a build that crashes.
INSTALL = """#!/bin/bash
set -eu
while [ $# -gt 0 ]; do case "$1" in
  --root) ROOT="$2"; shift 2 ;; --slot) SLOT="$2"; shift 2 ;; *) shift ;; esac; done
HERE="$(cd "$(dirname "$0")" && pwd)"
rm -rf "$ROOT/$SLOT" && mkdir -p "$ROOT/$SLOT/bin"
cp "$HERE/agent" "$ROOT/$SLOT/bin/edge-agent" && chmod 755 "$ROOT/$SLOT/bin/edge-agent"
cp "$HERE/VERSION" "$ROOT/$SLOT/.edge-agent-version"
"""


def agent_release(folder: Path, version: str, agent_script: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "INSTALLER.json").write_text(
        json.dumps({"version": version, "python": "3.11", "kind": "agent"})
    )
    (folder / "install").write_text(INSTALL)
    (folder / "agent").write_text(agent_script)
    (folder / "VERSION").write_text(version + "\n")
    return folder


def reported(hub: Hub, model: str) -> registry.ReportedModelState | None:
    engine = db.make_engine(hub.database_url)
    try:
        details = registry.show_device(engine, "dev-1")
    except registry.RegistryError:
        return None
    finally:
        engine.dispose()
    return next((m for m in details.models if m.model == model), None)


def events(hub: Hub, model: str) -> list[tuple[str, str, str | None]]:
    engine = db.make_engine(hub.database_url)
    try:
        details = registry.show_device(engine, "dev-1", events=50)
    finally:
        engine.dispose()
    return [(e.version, e.event, e.error) for e in details.recent_events if e.model == model]


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Hub]:
    yield from running_hub(
        db.sqlite_url(tmp_path / "hub.sqlite3"), tmp_path, tiny_model_dir, "managed"
    )


class Launched:
    def __init__(self, device: Device, root: Path) -> None:
        self.device, self.root = device, root
        env = {**device.env, "EDGE_AGENT__SYNC__UPDATE_CHECK_INTERVAL_SECONDS": "2",
               "EDGE_AGENT__TELEMETRY__POLICY": "off"}  # fmt: skip
        self.log = root.parent / "launcher.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", launcher_module.__file__, "--root", str(root),
                 "--deadline", "30", "--listen", f"127.0.0.1:{device.api_port}", "--",
                 "serve", "--model", "tiny"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.device.api_port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-20000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(40)


def test_the_fleet_updates_the_agent_pin_held_and_reported_then_switched_under_load(
    hub: Hub, tmp_path: Path
) -> None:
    repo = ReleaseRepository.open(hub.root / "repository", hub.root / "keys")
    publish_installer(repo, agent_release(tmp_path / "rel-0.2.0", "0.2.0", GOOD))
    device = enrolled_on_first_release(hub, tmp_path)
    root = tmp_path / "opt"
    make_slot(root, "a", GOOD, "0.1.0")
    save_state(root, SlotState(committed="a"))
    pinned = device.cli("self-update", "--pin", "0.1.0")
    assert pinned.returncode == 0, pinned.stderr

    agent = Launched(device, root)
    try:
        wait_for(lambda: active_on_hub(hub.database_url, "dev-1") == "1.0.0",
                 f"first report\n{agent.text()}")  # fmt: skip
        first = reported(hub, AGENT_RELEASE)
        assert first is not None and first.active == "0.1.0"
        time.sleep(5)  # update checks ran: a published release alone changes nothing
        assert not (root / "b").exists() and state(root)["trial"] is None

        assigned = hub.cli("device", "assign", AGENT_RELEASE, "0.2.0", "--device", "dev-1")
        assert assigned.returncode == 0, assigned.stderr
        assert "pinned to 0.1.0" in str(first.held)  # the operator sees a pin at once
        wait_for(lambda: (reported(hub, AGENT_RELEASE) or first).pending == "0.2.0",
                 f"the pin reported\n{agent.text()}\n{hub.log()[-3000:]}")  # fmt: skip
        held = reported(hub, AGENT_RELEASE)
        assert held is not None and "pinned to 0.1.0" in str(held.held)
        assert held.active == "0.1.0" and held.pending == "0.2.0"
        shown = hub.cli("device", "show", "dev-1").stdout
        assert "held on the device: pinned to 0.1.0" in shown, shown
        time.sleep(5)  # the retry job honours the pin too
        assert not (root / "b").exists() and state(root)["trial"] is None

        with Load(agent.url) as load:
            assert device.cli("self-update", "--unpin").returncode == 0
            wait_for(lambda: state(root)["committed"] == "b",
                     f"slot b committed\n{agent.text()}", 90)  # fmt: skip
            wait_for(lambda: (reported(hub, AGENT_RELEASE) or first).active == "0.2.0",
                     f"0.2.0 reported active\n{agent.text()}")  # fmt: skip
        assert load.failures() == [], load.failures()[:10]
        assert len(load.results) > 4
        after = reported(hub, AGENT_RELEASE)
        assert after is not None and after.held is None and after.last_result == "succeeded"
        wait_for(lambda: ("0.2.0", "healthy", None) in events(hub, AGENT_RELEASE),
                 f"the switch's result reported\n{agent.text()}", 30)  # fmt: skip
        time.sleep(5)  # the old agent drained and left without acting again
        assert sorted(events(hub, AGENT_RELEASE)) == [  # one install, nothing after it
            ("0.2.0", "healthy", None), ("0.2.0", "installed", None), ("0.2.0", "start", None)
        ]  # fmt: skip
        assert state(root)["committed"] == "b" and state(root)["trial"] is None
    finally:
        agent.stop()


def test_a_fleet_release_that_fails_its_health_check_falls_back_and_reports_why(
    hub: Hub, tmp_path: Path
) -> None:
    repo = ReleaseRepository.open(hub.root / "repository", hub.root / "keys")
    publish_installer(repo, agent_release(tmp_path / "rel-0.3.0", "0.3.0", CRASHES))
    device = enrolled_on_first_release(hub, tmp_path)
    root = tmp_path / "opt"
    make_slot(root, "a", GOOD, "0.1.0")
    save_state(root, SlotState(committed="a"))
    agent = Launched(device, root)
    try:
        wait_for(lambda: active_on_hub(hub.database_url, "dev-1") == "1.0.0",
                 f"first report\n{agent.text()}")  # fmt: skip
        assert (
            hub.cli("device", "assign", AGENT_RELEASE, "0.3.0", "--device", "dev-1").returncode == 0
        )
        wait_for(lambda: ("0.3.0", "rolled_back") in [e[:2] for e in events(hub, AGENT_RELEASE)],
                 f"the fallback reported\n{agent.text()}", 90)  # fmt: skip
        [why] = [e[2] for e in events(hub, AGENT_RELEASE) if e[1] == "rolled_back"]
        assert why is not None and "exited with status 3" in why
        assert state(root)["committed"] == "a" and "0.3.0" in state(root)["failed_versions"]  # type: ignore[operator]
        time.sleep(5)  # the retry job does not try a failed release again
        assert [e for e in events(hub, AGENT_RELEASE) if e[1] == "installed"] == [
            ("0.3.0", "installed", None)
        ]
        now = reported(hub, AGENT_RELEASE)
        assert now is not None and now.active == "0.1.0" and now.last_result == "rolled_back"
    finally:
        agent.stop()
    assert os.path.exists(root / "a" / "bin" / "edge-agent")
