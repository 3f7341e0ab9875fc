"""The whole fleet path, as operators run it: `edge-hub serve` (managed Mosquitto, the hub
database on SQLite and on PostgreSQL), a device enrolled with a token, a release assigned
by signed desired state, installed, reported back; then the device revoked and cut off."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hub.registry.repository import ReleaseRepository
from tests.fleet.processes import BIN, active_on_hub, wait_for
from tests.ports import free_port
from tests.updates.conftest import Fleet

READY_S = 60.0


@dataclass
class Hub:
    root: Path
    database_url: str
    http_port: int
    broker_port: int
    broker_mode: str = "managed"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def env(self) -> dict[str, str]:
        config = self.root / "hub.toml"
        return {**os.environ, "EDGE_HUB_CONFIG": str(config)}

    def write_config(self) -> None:
        text = f"""
[repository]
dir = "{self.root / "repository"}"
[artifacts]
port = {self.http_port}
tokens_file = "{self.root / "device-tokens.json"}"
[broker]
mode = "{self.broker_mode}"
port = {self.broker_port}
data_dir = "{self.root / "broker"}"
identity_dir = "{self.root / "identity"}"
[database]
url = "{self.database_url}"
"""
        (self.root / "hub.toml").write_text(text)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "edge-hub"), *args], env=self.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def start(self) -> None:
        with (self.root / "serve.log").open("wb") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [str(BIN / "edge-hub"), "serve"], env=self.env, stdout=log, stderr=log
            )

        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"edge-hub serve exited: {self.log()}")
            ca = self.root / "identity" / "ca.crt"  # the hub serves HTTPS from its own CA
            if not ca.exists():
                return False
            try:
                reply = httpx.get(
                    f"{self.url}/healthz", timeout=1, verify=ssl.create_default_context(cafile=ca)
                )
            except httpx.HTTPError:
                return False
            return reply.status_code == 200

        wait_for(up, "edge-hub serve", READY_S)

    def log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


@dataclass
class Device:
    data: Path
    api_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        config = self.data.parent / "agent-none.toml"  # no user config leaks into the test
        config.parent.mkdir(parents=True, exist_ok=True)
        config.touch()
        return {
            **os.environ,
            "EDGE_AGENT_CONFIG": str(config),
            "EDGE_AGENT__STORE__DIR": str(self.data),
            "EDGE_AGENT__API__PORT": str(self.api_port),
            "EDGE_AGENT__UPDATES__WATCH_INTERVAL_SECONDS": "0.2",
            "EDGE_AGENT__SYNC__RECONNECT_MIN_SECONDS": "0.5",
            "EDGE_AGENT__SYNC__RECONNECT_MAX_SECONDS": "1",
        }

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "edge-agent"), *args], env=self.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    def serve(self, model: str) -> None:
        with (self.data.parent / "agent.log").open("wb") as log:
            self.process = subprocess.Popen(
                [str(BIN / "edge-agent"), "serve", "--model", model],
                env=self.env,
                stdout=log,
                stderr=log,
            )

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"edge-agent serve exited: {self.log()}")
            try:
                url = f"http://127.0.0.1:{self.api_port}/readyz"
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, "edge-agent serve", READY_S)

    def log(self) -> str:
        return (self.data.parent / "agent.log").read_text(errors="replace")

    def link_connected(self) -> bool:
        path = self.data / "sync" / "status.json"
        return path.exists() and bool(json.loads(path.read_text())["connected"])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)


def running_hub(
    database_url: str, tmp_path: Path, tiny_model_dir: Path, broker_mode: str
) -> Iterator[Hub]:
    root = tmp_path / "hub"
    repo = ReleaseRepository.create(root / "repository", root / "keys")
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    variant = Fleet(repo, tmp_path / "unused", tiny_model_dir, tmp_path).variant("v11", top_k=5)
    repo.publish(variant, "tiny", "1.1.0")
    running = Hub(root, database_url, free_port(), free_port(), broker_mode)
    running.write_config()
    running.start()
    try:
        yield running
    finally:
        running.stop()


def enrolled_on_first_release(hub: Hub, tmp_path: Path) -> Device:
    """dev-1 enrolled with `hub` and holding tiny 1.0.0, not serving yet."""
    token = hub.cli("device", "enroll", "dev-1").stdout.strip()
    device = Device(tmp_path / "device", free_port())
    joined = device.cli("enroll", hub.url, "--device-id", "dev-1", "--token", token)
    assert joined.returncode == 0, joined.stderr
    assert device.cli("update", "tiny", "--version", "1.0.0").returncode == 0
    return device


@pytest.fixture
def hub(database_url: str, tmp_path: Path, tiny_model_dir: Path) -> Iterator[Hub]:
    yield from running_hub(database_url, tmp_path, tiny_model_dir, "managed")


def test_enroll_assign_report_revoke(hub: Hub, tmp_path: Path) -> None:
    fleet_path(hub, tmp_path)


def fleet_path(hub: Hub, tmp_path: Path) -> None:
    enrolled = hub.cli("device", "enroll", "dev-1")
    assert enrolled.returncode == 0, enrolled.stderr
    token = enrolled.stdout.strip()
    assert f"edge-agent enroll {hub.url} --device-id dev-1" in enrolled.stderr

    device = Device(tmp_path / "device", free_port())
    not_the_token = "x" * 43 + token[token.index("@") :]  # the right hub, a wrong secret
    wrong = device.cli("enroll", hub.url, "--device-id", "dev-1", "--token", not_the_token)
    assert wrong.returncode == 1
    assert "refused enrollment" in wrong.stderr and "unknown or already used" in wrong.stderr
    joined = device.cli("enroll", hub.url, "--device-id", "dev-1", "--token", token)
    assert joined.returncode == 0, joined.stderr
    spent = device.cli("enroll", hub.url, "--device-id", "dev-1", "--token", token)
    assert spent.returncode == 1 and "already used" in spent.stderr

    first = device.cli("update", "tiny", "--version", "1.0.0")  # from its hub, with its token
    assert first.returncode == 0, first.stderr
    try:
        device.serve("tiny")
        wait_for(lambda: active_on_hub(hub.database_url, "dev-1") == "1.0.0", "first report")

        missing = hub.cli("device", "assign", "tiny", "9.9.9", "--device", "dev-1")
        assert missing.returncode == 1 and "not a published release" in missing.stderr
        assigned = hub.cli("device", "assign", "tiny", "1.1.0", "--device", "dev-1")
        assert assigned.returncode == 0, assigned.stderr
        wait_for(
            lambda: active_on_hub(hub.database_url, "dev-1") == "1.1.0",
            f"the desired release installed and reported\n{device.log()}\n{hub.log()}",
        )
        shown = hub.cli("device", "show", "dev-1").stdout
        assert "tiny 1.1.0 healthy" in shown and "active=1.1.0 previous=1.0.0" in shown
        models = httpx.get(f"http://127.0.0.1:{device.api_port}/v1/models", timeout=5)
        assert models.status_code == 200

        assert device.link_connected()
        revoked = hub.cli("device", "revoke", "dev-1")
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: not device.link_connected(), "the revoked device cut off", 30)
        time.sleep(3)  # it keeps trying, and keeps being refused
        assert not device.link_connected()
        listing = hub.cli("device", "list").stdout
        assert "dev-1" in listing and "revoked" in listing
    finally:
        device.stop()
