"""Hubs for enrollment tests: the hub's own enrollment and artifact server, over HTTPS on a
free loopback port, in a thread. A fake hub is the same software with its own CA, TUF root
and director key, which is exactly what an attacker can run."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from sqlalchemy import Engine

from edge_agent.sync.hubtrust import Ticket
from hub import db
from hub.artifacts.server import create_app
from hub.artifacts.tokens import TokenStore
from hub.fleet import registry
from hub.fleet.director import DirectorKey
from hub.fleet.enrollment import EnrollmentDesk, enrollment_route, hub_ca_route
from hub.fleet.https import fingerprint, https_files, tls_hosts
from hub.fleet.identity import DeviceCA, EnrollmentTokens
from hub.registry.repository import ReleaseRepository
from tests.conftest import ServerThread


class Recorder:
    """An ASGI wrapper that notes every request the server receives: what a fake hub saw."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["path"]))
        await self.app(scope, receive, send)


@dataclass
class Hub:
    folder: Path
    ca: DeviceCA = field(init=False)
    repo: ReleaseRepository = field(init=False)
    tokens: EnrollmentTokens = field(init=False)
    downloads: TokenStore = field(init=False)
    engine: Engine = field(init=False)

    def __post_init__(self) -> None:
        self.ca = DeviceCA(self.folder / "identity")
        self.repo = ReleaseRepository.create(self.folder / "repository", self.folder / "keys")
        self.tokens = EnrollmentTokens(self.folder / "identity" / "tokens.json")
        self.downloads = TokenStore(self.folder / "device-tokens.json")
        self.engine = db.make_engine(f"sqlite:///{self.folder / 'hub.sqlite3'}")
        db.migrate(self.engine)

    def token(self, device_id: str) -> str:
        """What `edge-hub device enroll` prints for `device_id`."""
        registry.prepare(self.engine, device_id)
        return str(Ticket(self.tokens.create(device_id), fingerprint(self.ca)))

    def serve(self) -> HttpsServer:
        desk = EnrollmentDesk(
            ca=self.ca,
            tokens=self.tokens,
            downloads=self.downloads,
            engine=self.engine,
            broker_url="mqtts://127.0.0.1:8883",
            director_keys=DirectorKey(self.folder / "keys").public_pems,
            tuf_root=self.repo.trusted_root_path(),
        )
        app = create_app(
            self.repo.root, self.downloads, [hub_ca_route(self.ca), enrollment_route(desk)]
        )
        files, _made = https_files(self.ca, tls_hosts("127.0.0.1"))
        return HttpsServer(Recorder(app), files.cert, files.key)


class HttpsServer(ServerThread):
    def __init__(self, app: Recorder, cert: Path, key: Path) -> None:
        super().__init__(app)
        self.recorder = app
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def posts(self) -> list[str]:
        return [path for method, path in self.recorder.seen if method == "POST"]


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (links followed once): its bytes, or a link's target."""
    found: dict[str, bytes | str] = {}
    if not folder.exists() and not folder.is_symlink():
        return found
    for path in sorted(folder.rglob("*")):
        name = str(path.relative_to(folder))
        if path.is_symlink():
            found[name] = "-> " + str(path.readlink())
            for inner in sorted(path.rglob("*")):
                found[str(inner.relative_to(folder))] = inner.read_bytes()
        elif path.is_file():
            found[name] = path.read_bytes()
    return found
