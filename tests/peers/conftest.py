"""A site on loopback: a real hub (HTTPS artifact server, device CA, signed repository) and
devices with real stores and certificates from the hub's device CA, whose chunk servers
run behind real mutual TLS on free 127.0.0.1 ports."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import pytest

from edge_agent.store import ModelStore
from edge_agent.sync.identity import key_pem, make_csr, new_key
from edge_agent.updates.chunks import peer_sources
from edge_agent.updates.fetchers import fetcher_for
from edge_agent.updates.manager import Outcome, UpdateManager
from edge_agent.updates.peer_server import create_app, peer_server
from edge_agent.updates.peer_tls import FleetTls
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.fleet.identity import DeviceCA
from tests.ports import free_port
from tests.sync.hubs import HttpsServer, Hub, Recorder

MODEL = "tiny"


def chunk_gets(recorder: Recorder) -> list[str]:
    return [path for method, path in recorder.seen if method == "GET" and "/chunks/" in path]


class PeerThread:
    """An ASGI app behind the fleet's mutual TLS (peer_server), in a thread, recorded."""

    def __init__(self, app: Any, tls: FleetTls, *, max_connections: int = 32) -> None:
        self.recorder = Recorder(app)
        self.port = free_port()
        self.server = peer_server(
            self.recorder, tls, host="127.0.0.1", port=self.port, max_connections=max_connections
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def chunk_gets(self) -> list[str]:
        return chunk_gets(self.recorder)

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the peer server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Device:
    name: str
    folder: Path
    hub: Hub
    hub_url: str
    token: str = field(init=False)

    def __post_init__(self) -> None:
        identity = self.folder / "identity"
        identity.mkdir(parents=True)
        key = new_key()
        cert = self.hub.ca.issue_device_certificate(make_csr(key, self.name), self.name)
        (identity / "device.key").write_bytes(key_pem(key))
        (identity / "device.crt").write_bytes(cert)
        shutil.copyfile(self.hub.ca.ca_cert_path, identity / "ca.crt")
        pin_root(self.folder / "trust", self.hub.repo.trusted_root_path())
        self.token = self.hub.downloads.issue(self.name)

    @property
    def tls(self) -> FleetTls:
        identity = self.folder / "identity"
        return FleetTls(identity / "ca.crt", identity / "device.crt", identity / "device.key")

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.folder)

    def manager(self) -> UpdateManager:
        return UpdateManager(self.store, self.folder / "update-state.json")

    def import_stick(self, stick: Path) -> Outcome:
        """What `edge-agent update --from STICK` does: a repository folder, no network."""
        base, fetcher = fetcher_for(str(stick))
        with ReleaseSource(base, self.folder / "trust", fetcher) as source:
            return self.manager().update(source, MODEL)

    def update(self, peers: list[str], *, tls: FleetTls | None = None) -> tuple[Outcome, Any]:
        """Metadata from the hub, chunks from `peers` first; the outcome and the chain."""
        base, fetcher = fetcher_for(self.hub_url, self.token, ca_file=self.hub.ca.ca_cert_path)
        sources = peer_sources(peers, tls or self.tls)
        with ReleaseSource(base, self.folder / "trust", fetcher, peers=sources) as source:
            return self.manager().update(source, MODEL), source.chunks

    def serve_chunks(self) -> PeerThread:
        return PeerThread(create_app(self.store), self.tls)


@dataclass
class Site:
    hub: Hub
    server: HttpsServer
    stick: Path
    tmp: Path

    def device(self, name: str) -> Device:
        return Device(name, self.tmp / name, self.hub, self.server.url)

    @property
    def hub_chunk_gets(self) -> list[str]:
        return chunk_gets(self.server.recorder)

    def chunks(self) -> dict[str, int]:
        return self.hub.repo.manifest(MODEL, "1.0.0").unique_chunks()


@pytest.fixture
def site(tiny_model_dir: Path, tmp_path: Path) -> Iterator[Site]:
    hub = Hub(tmp_path / "hub")
    hub.repo.publish(tiny_model_dir, MODEL, "1.0.0")
    stick = tmp_path / "stick"  # what a technician carries: the served folders, copied
    for folder in ("metadata", "targets", "chunks"):
        shutil.copytree(hub.repo.root / folder, stick / folder)
    with hub.serve() as server:
        yield Site(hub, server, stick, tmp_path)


@pytest.fixture
def stranger(tmp_path: Path) -> FleetTls:
    """A device of another fleet: a certificate from a CA that is not this hub's."""
    ca = DeviceCA(tmp_path / "other-ca")
    key = new_key()
    folder = tmp_path / "stranger"
    folder.mkdir()
    (folder / "device.key").write_bytes(key_pem(key))
    (folder / "device.crt").write_bytes(ca.issue_device_certificate(make_csr(key, "x1"), "x1"))
    shutil.copyfile(ca.ca_cert_path, folder / "ca.crt")
    return FleetTls(folder / "ca.crt", folder / "device.crt", folder / "device.key")
