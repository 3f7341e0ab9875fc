"""Where Mosquitto is missing, `edge-hub serve` and `edge-hub demo` stop at once and say
how to install it on each system; there is no other broker to fall back to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub.demo import DemoError, DemoOptions, run_demo
from hub.registry.repository import ReleaseRepository
from tests.hub_broker.test_broker_config import INSTALL_COMMANDS
from tests.ports import free_port

BIN = Path(sys.executable).parent


def test_serve_stops_with_the_install_commands(tmp_path: Path) -> None:
    ReleaseRepository.create(tmp_path / "repository", tmp_path / "keys")
    (tmp_path / "hub.toml").write_text(
        f"""
[repository]
dir = "{tmp_path / "repository"}"
[artifacts]
port = {free_port()}
tokens_file = "{tmp_path / "tokens.json"}"
[broker]
port = {free_port()}
data_dir = "{tmp_path / "broker"}"
identity_dir = "{tmp_path / "identity"}"
binary = "{tmp_path / "no-mosquitto"}"
[database]
url = "sqlite:///{tmp_path / "hub.sqlite3"}"
"""
    )
    env = {**os.environ, "EDGE_HUB_CONFIG": str(tmp_path / "hub.toml")}
    done = subprocess.run(
        [str(BIN / "edge-hub"), "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    message = " ".join(done.stderr.split())  # the terminal may wrap it
    assert "the hub could not start" in message
    assert f"{tmp_path / 'no-mosquitto'} is not an executable file" in message
    for command in INSTALL_COMMANDS:
        assert command in message
    assert not (tmp_path / "broker" / "mosquitto.conf").exists()


def test_demo_stops_before_any_slow_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr("hub.broker.mosquitto.SEARCH_DIRS", (tmp_path / "empty",))
    folder = tmp_path / "demo"
    with pytest.raises(DemoError, match="the demo hub runs Mosquitto") as stopped:
        run_demo(DemoOptions(folder=folder, shape="tiny", devices=1))
    for command in INSTALL_COMMANDS:
        assert command in str(stopped.value)
    assert not (folder / "hub").exists()  # no repository, no keys, no model built
