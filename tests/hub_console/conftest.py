"""A real console over HTTP on loopback: a migrated hub database with enrolled devices,
users of every role, and a browser-like client that keeps its session cookie and CSRF token.
For the browser tests: Debian's headless Chromium (Playwright) as `browser_page`, logging in
through the form, and a screenshot plus an axe scan of a page, written once here."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import playwright.sync_api as playwright_api  # the dev extra installs it
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from starlette.applications import Starlette

from hub import db
from hub.console import accounts, sessions
from hub.console.app import console_mount
from hub.fleet import registry
from hub.rollouts import store
from hub.rollouts.api import RolloutDesk, api_mount
from hub.rollouts.auth import Role
from hub.rollouts.spec import RolloutSpec
from tests.conftest import ServerThread
from tests.hub_rollouts.conftest import releases
from tests.hub_telemetry.helpers import T0
from tests.needs import need

PASSWORD = "correct horse battery"
ROLES = {"vera": Role.VIEWER, "olga": Role.OPERATOR, "anna": Role.APPROVER, "adam": Role.ADMIN}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"


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


def make_rollout(engine: Engine, by: str = "olga") -> int:
    """A rollout of chat 2.0.0 to the shop group in two waves, created by `by`."""
    spec = RolloutSpec.model_validate(
        {
            "model": "chat",
            "version": "2.0.0",
            "target": {"group": "shop"},
            "wave_percent": [50, 100],
        }
    )
    created = store.create(engine, spec, by, releases)
    assert created.id is not None
    return created.id


@pytest.fixture(name="browser_page")
def browser_page_fixture() -> Iterator[Any]:
    """A tablet-sized Chromium page, times in the operator's zone; a script error or CSP
    refusal on any page it showed fails the test."""
    need(shutil.which(CHROMIUM) is not None, "needs Debian's chromium: apt-get install chromium")
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots in {SHOTS}")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(
            viewport={"width": 1024, "height": 900}, timezone_id="Europe/Berlin"
        )
        opened = context.new_page()
        errors: list[str] = []
        opened.on(
            "console",
            # A 4xx answer is logged too (the refused form, the absent favicon): not a fault.
            lambda m: (
                errors.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        yield opened
        assert errors == [], f"the pages broke their CSP or scripts: {errors}"
        context.close()
        browser.close()


def log_in(page: Any, url: str, name: str = "olga") -> None:
    """Through the login form, as an operator would."""
    page.goto(url + "/console/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(url + "/console/")


def check_page(page: Any, name: str) -> None:
    """Screenshot, then axe: no serious or critical violations."""
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.evaluate(AXE.read_text())  # through DevTools: the page's own CSP stays in force
    found = page.evaluate("async () => (await axe.run()).violations")
    bad = [
        f"{v['id']}: {v['help']} ({len(v['nodes'])})"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{name}: {bad}"


def pause_in_page(page: Any, rollout: int, reason: str) -> None:
    """Pause the rollout shown through its confirmation form; the page then says why."""
    page.get_by_text("Pause…").click()
    page.get_by_label("Reason (kept in the audit log)").first.fill(reason)
    page.get_by_label(f"I confirm: pause rollout {rollout}").check()
    page.get_by_role("button", name="Pause rollout").click()
    assert page.locator("#rollout-state").inner_text() == "paused"
    assert reason in page.locator("#waiting-for").inner_text()
