"""The whole air gap, through the real commands: a device with no network at all enrolls by
stick, installs a release from a stick, generates, and writes its outbox back; the hub
ingests it once (the same stick twice changes nothing) and its receipt on the next stick
empties the device's outbox.

Every device command runs in a network namespace of its own (`unshare -n`: only a loopback
interface, down), checked by reading /proc/self/net/dev inside it. Where unshare is not
allowed (no root, no user namespaces), the test fails and says what it needs.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.sync.outbox import Outbox
from tests.airgap.conftest import BUNDLE_PASSPHRASE, DEVICE, UNSHARE, Site

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.usefixtures("network_namespace")


class Air:
    def __init__(self, site: Site) -> None:
        hub = site.tmp / "hub"
        self.site = site
        self.db = hub / "hub.sqlite3"
        self.hub_env = {
            **os.environ,
            "EDGE_HUB__BROKER__IDENTITY_DIR": str(hub / "identity"),
            "EDGE_HUB__DATABASE__URL": f"sqlite:///{self.db}",
            "EDGE_HUB__ARTIFACTS__TOKENS_FILE": str(hub / "device-tokens.json"),
            "EDGE_HUB__REPOSITORY__DIR": str(site.repo.root),
            "EDGE_HUB__REPOSITORY__KEYS_DIR": str(site.hub_keys),
        }
        self.agent_env = {
            **os.environ,
            "EDGE_AGENT__STORE__DIR": str(site.device),
            "ORT_DISABLE_TELEMETRY": "1",
        }
        self.receipts = hub / "receipts"

    def hub(self, *args: str) -> str:
        done = subprocess.run(
            [str(BIN / "edge-hub"), *args], env=self.hub_env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def offline(self, *args: str) -> str:
        """An agent command in a namespace with no network."""
        done = subprocess.run(
            [str(UNSHARE), "-n", str(BIN / "edge-agent"), *args], env=self.agent_env,
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done.stdout

    def export(self, stick: Path) -> None:
        key = self.site.bundle_key()
        passfile = self.site.tmp / "bundle-pass"
        passfile.write_bytes(BUNDLE_PASSPHRASE + b"\n")
        done = subprocess.run(
            [str(BIN / "edge-hub"), "usb", "export", str(stick), "--repo", str(self.site.repo.root),
             "--bundle-key", str(key), "--bundle-passphrase-file", str(passfile),
             "--release", "tiny=1.0.0", "--site", "ward-7", "--device", DEVICE,
             "--db", f"sqlite:///{self.db}", "--receipts", str(self.receipts)],
            env=self.hub_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db) as db:
            return db.execute(sql).fetchall()


def test_air_gap_round_trip(site: Site) -> None:
    air = Air(site)
    no_net = subprocess.run(
        [str(UNSHARE), "-n", "cat", "/proc/self/net/dev"], capture_output=True, text=True
    ).stdout
    interfaces = [line.split(":")[0].strip() for line in no_net.splitlines()[2:]]
    assert interfaces == ["lo"], f"the namespace still has {interfaces}"

    token = air.hub("device", "enroll", DEVICE).strip().splitlines()[-1]
    stick = site.tmp / "stick"
    stick.mkdir()
    assert "request written" in air.offline(
        "enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token
    )
    air.hub("enroll-import", str(stick))
    assert "by stick" in air.offline(
        "enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token
    )

    air.export(stick)
    assert "1.0.0 installed and active" in air.offline("import", str(stick))
    generated = air.offline("run", "tiny", "Hello", "--max-tokens", "8", "--temperature", "0")
    assert len(generated) > 1, "the model generated nothing"  # random weights: any text

    assert "2 messages" in air.offline("export", str(stick))
    first = air.hub("import", str(stick), "--receipts", str(air.receipts))
    second = air.hub("import", str(stick), "--receipts", str(air.receipts))  # changes nothing
    assert '"stored": 2' in first and '"duplicates": 0' in first
    assert '"stored": 0' in second and '"duplicates": 2' in second
    assert air.rows("select device_id, model, active from reported_state") == [
        (DEVICE, "tiny", "1.0.0")
    ]
    assert air.rows("select count(*) from install_events") == [(1,)]

    with Outbox(site.device / "sync" / "outbox.sqlite3") as outbox:
        assert outbox.depth() == 2  # exported, kept until the receipt comes back
    next_stick = site.tmp / "next-stick"
    air.export(next_stick)
    air.offline("import", str(next_stick))
    with Outbox(site.device / "sync" / "outbox.sqlite3") as outbox:
        # the receipted two are gone; this import's own report waits for the next stick
        assert [item.message_id for item in outbox.pending()] and outbox.depth() == 1
