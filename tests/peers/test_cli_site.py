"""The same site with the agent's own commands, as real processes: device A imports the
stick and runs `edge-agent serve` with `[peers] serve = true`; device B holds only the
stick's metadata (no chunks) and `edge-agent update` gets every chunk from A."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.conftest import MODEL, Device, Site
from tests.ports import free_port

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"


def configure(device: Device, peers: str) -> dict[str, str]:
    config = device.folder / "agent.toml"
    config.write_text(f'[store]\ndir = "{device.folder}"\n[telemetry]\npolicy = "off"\n{peers}')
    return {**os.environ, "EDGE_AGENT_CONFIG": str(config)}


def agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(EDGE_AGENT), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def serving_a(site: Site) -> Iterator[int]:
    """Device A: imported from the stick, serving its model and its chunks; the peer port."""
    a = site.device("dev-a")
    peer_port, api_port = free_port(), free_port()
    env = configure(a, f"[peers]\nserve = true\nport = {peer_port}\n")
    imported = agent(env, "update", MODEL, "--from", str(site.stick))
    assert imported.returncode == 0, imported.stderr
    proc = subprocess.Popen(
        [str(EDGE_AGENT), "serve", "--model", MODEL, "--port", str(api_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/v1/models", timeout=2).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.communicate(timeout=10)[1]
        yield peer_port
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)


def metadata_only(site: Site) -> Path:
    stick = site.tmp / "stick-without-chunks"
    for folder in ("metadata", "targets"):
        shutil.copytree(site.stick / folder, stick / folder)
    return stick


def test_update_fetches_every_chunk_from_a_serving_agent(site: Site, serving_a: int) -> None:
    b = site.device("dev-b")
    env = configure(b, f'[peers]\nsources = ["https://127.0.0.1:{serving_a}"]\n')
    done = agent(env, "update", MODEL, "--from", str(metadata_only(site)))
    assert done.returncode == 0, done.stderr
    assert "1.0.0 installed and active" in done.stdout
    active = b.store.active(MODEL)
    assert active is not None and active.version == "1.0.0"


def test_without_the_peer_the_chunkless_stick_cannot_install(site: Site) -> None:
    """The control: the stick B holds has no chunks, so the test above got them from A."""
    b = site.device("dev-b")
    done = agent(configure(b, ""), "update", MODEL, "--from", str(metadata_only(site)))
    assert done.returncode != 0
    assert b.store.active(MODEL) is None


def test_peers_need_an_enrolled_device(site: Site) -> None:
    b = site.device("dev-b")
    (b.folder / "identity" / "device.key").unlink()
    env = configure(b, '[peers]\nsources = ["https://127.0.0.1:9"]\n')
    done = agent(env, "update", MODEL, "--from", str(site.stick))
    assert done.returncode != 0
    assert "device key" in done.stderr and "edge-agent enroll" in done.stderr
