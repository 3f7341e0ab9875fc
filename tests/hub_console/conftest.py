"""A real console over HTTP on loopback: a migrated hub database with enrolled devices,
users of every role, and a browser-like client that keeps its session cookie and CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from starlette.applications import Starlette

from hub import db
from hub.console import accounts, sessions
from hub.console.app import console_mount
from hub.fleet import registry
from hub.rollouts.api import RolloutDesk, api_mount
from hub.rollouts.auth import Role
from tests.conftest import ServerThread
from tests.hub_rollouts.conftest import releases
from tests.hub_telemetry.helpers import T0

PASSWORD = "correct horse battery"
ROLES = {"vera": Role.VIEWER, "olga": Role.OPERATOR, "anna": Role.APPROVER, "adam": Role.ADMIN}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Browser:
    """What a browser keeps: the session cookie (sent as a header: the test server is plain
    HTTP on loopback, where httpx would not send a Secure cookie) and the page's CSRF token."""

    url: str
    cookie: str | None = None
    csrf: str | None = None
    client: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    def headers(self) -> dict[str, str]:
        return {"Cookie": f"{sessions.COOKIE}={self.cookie}"} if self.cookie else {}

    def get(self, path: str) -> httpx.Response:
        response = self.client.get(self.url + path, headers=self.headers())
        found = CSRF.search(response.text)
        if found:
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str], csrf: bool = True) -> httpx.Response:
        form = {**data, "csrf_token": self.csrf or ""} if csrf else data
        return self.client.post(self.url + path, data=form, headers=self.headers())

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        response = self.client.post(
            self.url + "/console/login", data={"name": name, "password": password}
        )
        if response.status_code == 303:
            self.cookie = response.cookies.get(sessions.COOKIE)
            self.get("/console/")
        return response


@dataclass
class Console:
    url: str
    engine: Engine
    browsers: list[Browser] = field(default_factory=list)

    def browser(self, name: str | None = None) -> Browser:
        browser = Browser(self.url)
        self.browsers.append(browser)
        if name is not None:
            assert browser.login(name).status_code == 303
        return browser


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = db.make_engine(db.sqlite_url(tmp_path / "hub.sqlite3"))
    db.migrate(engine)
    registry.create_group(engine, "shop")
    for i in range(20):
        registry.enroll(engine, f"box-{i:02d}", group="shop", tags={"site": "berlin"}, at=T0)
    for name, role in ROLES.items():
        accounts.add_user(engine, name, role, PASSWORD)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def console(engine: Engine) -> Iterator[Console]:
    key = Ed25519PrivateKey.generate()
    from hub.console.sessions import ConsoleSessions

    desk = RolloutDesk(engine, releases, lambda: key, [ConsoleSessions(engine)])
    app = Starlette(routes=[api_mount(desk), console_mount(desk)])
    with ServerThread(app) as server:
        shown = Console(server.url, engine)
        try:
            yield shown
        finally:
            for browser in shown.browsers:
                browser.client.close()
