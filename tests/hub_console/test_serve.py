"""The console under a real `edge-hub serve` (its own process, free loopback ports, the
managed Mosquitto): it answers over HTTPS with a certificate from the hub's CA, the first
admin logs in with the one-time password the hub printed once, must choose a new one, and
then sees the fleet and the releases of the hub's own repository."""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hub.console import sessions
from tests.fleet.processes import wait_for
from tests.fleet.test_hub_and_agent import Hub
from tests.hub_console.conftest import CSRF
from tests.ports import free_port

pytestmark = pytest.mark.slow
ONE_TIME = re.compile(r"first console user: admin, one-time password (\S+)")
NEW_PASSWORD = "a long new admin passphrase"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    served = Hub(tmp_path, f"sqlite:///{tmp_path / 'hub.sqlite3'}", free_port(), free_port())
    served.write_config()
    with (tmp_path / "hub.toml").open("a") as config:
        config.write(f'[api]\noperator_tokens_file = "{tmp_path / "operator-tokens.json"}"\n')
    init = served.cli("repo", "init")
    assert init.returncode == 0, init.stderr
    served.start()
    try:
        yield served
    finally:
        served.stop()


def _post(
    client: httpx.Client, url: str, page: httpx.Response, form: dict[str, str]
) -> httpx.Response:
    found = CSRF.search(page.text)
    assert found, page.text
    return client.post(url, data={**form, "csrf_token": found.group(1)})


def test_console_over_https_with_the_first_admins_one_time_password(hub: Hub) -> None:
    password = wait_for(lambda: ONE_TIME.search(hub.log()), "the one-time password", 30)
    assert isinstance(password, re.Match)
    trusted = ssl.create_default_context(cafile=hub.root / "identity" / "ca.crt")
    with httpx.Client(base_url=hub.url, verify=trusted, timeout=30) as client:
        login = client.get("/console/login")
        assert login.status_code == 200 and "content-security-policy" in login.headers
        done = client.post("/console/login", data={"name": "admin", "password": password[1]})
        assert done.status_code == 303, done.text
        cookie = done.headers["set-cookie"]
        assert cookie.startswith(f"{sessions.COOKIE}=") and "secure" in cookie.lower()
        # A one-time password: every page sends the admin to choose a new one first.
        first = client.get("/console/")
        assert first.status_code == 303 and first.headers["location"] == "/console/password"
        form = client.get("/console/password")
        changed = _post(
            client, "/console/password", form,
            {"current_password": password[1], "new_password": NEW_PASSWORD, "again": NEW_PASSWORD},
        )  # fmt: skip
        assert changed.status_code == 303, changed.text
        # Changing it ended the session; the old password is gone, the new one works.
        old = client.post("/console/login", data={"name": "admin", "password": password[1]})
        assert old.status_code == 401
        again = client.post("/console/login", data={"name": "admin", "password": NEW_PASSWORD})
        assert again.status_code == 303
        fleet = client.get("/console/")
        assert fleet.status_code == 200 and "admin (admin)" in fleet.text
        releases = client.get("/console/releases")
        assert releases.status_code == 200 and "No releases yet" in releases.text
    # Printed once: the restarted hub (a fresh log) does not show it again.
    hub.stop()
    hub.start()
    wait_for(lambda: "devices connect to" in hub.log(), "the restarted hub's banner", 30)
    assert ONE_TIME.search(hub.log()) is None
