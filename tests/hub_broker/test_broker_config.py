"""The broker section of the hub config, the generated Mosquitto config, clear failures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from edge_agent.protocol import MAX_MESSAGE_BYTES
from hub.broker import BrokerError, BrokerMissing, ManagedMosquitto, managed_broker
from hub.broker.mosquitto import AUTOSAVE_SECONDS, find_mosquitto
from hub.config import ConfigError, load_config
from hub.fleet.authority import FleetAuthority
from hub.fleet.identity import DeviceCA
from tests.ports import free_port

INSTALL_COMMANDS = (
    "sudo apt-get install mosquitto",
    "sudo dnf install mosquitto",
    "brew install mosquitto",
)


def test_defaults_to_a_managed_loopback_broker() -> None:
    broker = load_config(None, {}).broker
    assert (broker.mode, broker.host, broker.port, broker.url) == (
        "managed",
        "127.0.0.1",
        8883,
        None,
    )


def test_external_needs_a_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs url"):
        load_config(None, {"EDGE_HUB__BROKER__MODE": "external"})
    path = tmp_path / "hub.toml"
    path.write_text('[broker]\nmode = "external"\nurl = "mqtts://broker:8883"\n')
    config = load_config(path, {})
    with pytest.raises(BrokerError, match="'external': the hub uses mqtts://broker:8883"):
        managed_broker(config, FleetAuthority(config).ca)


def test_missing_binary_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("hub.broker.mosquitto.SEARCH_DIRS", (tmp_path,))
    with pytest.raises(BrokerMissing, match="Mosquitto is not installed") as missing:
        find_mosquitto()
    assert all(command in str(missing.value) for command in INSTALL_COMMANDS)
    with pytest.raises(BrokerMissing, match="not an executable file") as not_there:
        find_mosquitto(tmp_path / "nope")
    assert all(command in str(not_there.value) for command in INSTALL_COMMANDS)


def test_embedded_mode_is_gone() -> None:
    """Mosquitto is the one broker: a config that asks for another is refused."""
    with pytest.raises(ConfigError, match=r"managed.*external"):
        load_config(None, {"EDGE_HUB__BROKER__MODE": "embedded"})


def test_generated_config(tmp_path: Path) -> None:
    config = load_config(
        None,
        {
            "EDGE_HUB__BROKER__DATA_DIR": str(tmp_path / "broker"),
            "EDGE_HUB__BROKER__IDENTITY_DIR": str(tmp_path / "identity"),
            "EDGE_HUB__BROKER__PORT": str(free_port()),
        },
    )
    broker = managed_broker(config, FleetAuthority(config).ca, {"dev-a": ["lab"]})
    with broker:
        text = broker.config_path.read_text()
        acl = broker.acl_path.read_text()
    for line in (
        f"listener {config.broker.port} 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        f"crlfile {broker.ca.crl_path}",
        "persistence true",
        # Saved every few seconds and on stop, not after every change (O(n^2) fan-out);
        # what a crash loses is re-published (test_broker_crash.py).
        "autosave_on_changes false",
        f"autosave_interval {AUTOSAVE_SECONDS}",
        "max_queued_messages 1000000",
        "allow_anonymous false",
    ):
        assert line in text.splitlines()
    assert f"max_packet_size {MAX_MESSAGE_BYTES + 4096}" in text
    assert "user dev-a\ntopic read edge/v1/groups/lab/announce" in acl
    for hub_client in ("_hub", "_hub-ingest", "_hub-director"):
        assert f"user {hub_client}\ntopic readwrite edge/v1/#" in acl
    for path in (broker.config_path, broker.acl_path):
        assert path.stat().st_mode & 0o077 == 0
    assert os.access(broker.persistence_dir / "mosquitto.db", os.R_OK)  # saved on stop


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = ManagedMosquitto(tmp_path / "broker", DeviceCA(tmp_path / "ca"), port=port)
        with pytest.raises(BrokerError, match="mosquitto exited with"):
            broker.start()
        assert not broker.running
