"""The console in Debian's headless Chromium against a real hub: SQLite, the managed
Mosquitto over TLS, the desired-state publisher, the ingest worker and the rollout driver
stepping in the background as `edge-hub serve` steps it, with 20 simulated devices that
verify their signed desired state and report through the broker (hub.simulate).

An operator creates a rollout through the form, watches it go wave by wave on the live page
(htmx), pauses it with a reason, resumes it and sees it complete; with a release whose error
rate is doubled, the health gate trips and the page says why. Screenshots of each page go to
build/console-screenshots (tablet width, 1024 px, and a laptop's)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from starlette.applications import Starlette

from hub.broker import BrokerMissing
from hub.console import accounts
from hub.console.app import console_mount
from hub.console.sessions import ConsoleSessions
from hub.rollouts import store
from hub.rollouts.api import RolloutDesk, api_mount
from hub.rollouts.auth import Role
from hub.rollouts.driver import Driver
from hub.rollouts.health import telemetry_query
from hub.simulate import Behaviour, DeviceProfile, SimulatedFleet
from hub.simulate.harness import SimulationHub
from hub.telemetry.models import TELEMETRY
from tests.conftest import ServerThread
from tests.hub_console.conftest import PASSWORD, check_page, log_in, pause_in_page
from tests.hub_rollouts.conftest import releases

pytestmark = pytest.mark.slow


DEVICES = 20


@dataclass
class ShiftedClock:
    """Real time plus an offset the test moves (an hour of telemetry passes at once)."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class LiveHub:
    url: str
    hub: SimulationHub
    fleet: SimulatedFleet
    clock: ShiftedClock
    ids: list[str]


class DriverThread(threading.Thread):
    """What the serving hub's jobs do every 2 s, here every 0.2 s: a step of each active
    rollout, then the publisher's round."""

    def __init__(self, driver: Driver, hub: SimulationHub) -> None:
        super().__init__(daemon=True)
        self.driver, self.hub = driver, hub
        self.done = threading.Event()
        self.failures: list[BaseException] = []

    def run(self) -> None:
        while not self.done.wait(0.2):
            try:
                self.driver.step_all()
                self.hub.publish_pending()
            except BaseException as exc:  # surfaced by the test, not lost in a thread
                self.failures.append(exc)
                return


@contextmanager
def live_hub(folder: Path, profile: DeviceProfile | None = None) -> Iterator[LiveHub]:
    try:
        hub = SimulationHub(folder)
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with hub:
        enrolled = hub.enroll(DEVICES, group="lab")
        ids = [e.device_id for e in enrolled]
        accounts.add_user(hub.engine, "olga", Role.OPERATOR, PASSWORD)
        clock = ShiftedClock()
        driver = Driver(
            hub.engine, lambda: hub.director_key, releases, telemetry_query(hub.engine, 5), clock
        )
        key = Ed25519PrivateKey.generate()
        desk = RolloutDesk(hub.engine, releases, lambda: key, [ConsoleSessions(hub.engine)])
        app = Starlette(routes=[api_mount(desk), console_mount(desk)])
        with hub.fleet() as fleet, ServerThread(app) as server:
            fleet.add(enrolled, profile=profile, active={"chat": "1.0.0"})
            fleet.connect()
            hub.assign(ids, "chat", "1.0.0")  # what they run now
            hub.publish_pending()
            fleet.wait_sequence(dict.fromkeys(ids, 1))
            stepping = DriverThread(driver, hub)
            stepping.start()
            try:
                yield LiveHub(server.url, hub, fleet, clock, ids)
            finally:
                stepping.done.set()
                stepping.join(10)
            assert stepping.failures == []


def _create(page: Any, url: str, waves: str, kind: str, soak: str, gate: str = "") -> int:
    page.goto(url + "/console/rollouts/new")
    page.get_by_label("Model").fill("chat")
    page.get_by_label("Release (version)").fill("2.0.0")
    page.get_by_label("Group").fill("lab")
    page.get_by_label("Waves", exact=True).fill(waves)
    page.locator(f'input[name="wave_kind"][value="{kind}"]').check()
    page.get_by_label("Soak per wave (seconds)").fill(soak)
    page.get_by_label("Health gate: largest error-rate increase (e.g. 0.01; empty: off)").fill(gate)
    page.get_by_role("button", name="Create rollout").click()
    page.wait_for_url(f"{url}/console/rollouts/*")
    return int(page.url.rsplit("/", 1)[1])


def _progress(page: Any) -> list[tuple[int, int]]:
    """(succeeded, size) of each wave as the live page shows it now."""
    bars = page.locator("progress").all()
    return [(int(b.get_attribute("value")), int(b.get_attribute("max"))) for b in bars]


def _watch(page: Any, until: Callable[[], bool], seen: list[Any], timeout_s: float = 60) -> None:
    """Read the live page (htmx swaps it every 2 s, no reload) until `until`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen.append((page.locator("#rollout-state").inner_text(), _progress(page)))
        if until():
            return
        time.sleep(0.3)
    raise AssertionError(f"the live page never got there; it showed {seen[-5:]}")


def test_operator_runs_a_rollout_wave_by_wave_from_the_browser(
    tmp_path: Path, browser_page: Any
) -> None:
    page = browser_page
    with live_hub(tmp_path / "hub") as live:
        log_in(page, live.url)
        assert f"{DEVICES} device(s)" in page.content()
        check_page(page, "live-fleet")
        rollout = _create(page, live.url, "10,50,100", "percent", soak="4")
        seen: list[Any] = []
        # Wave 1 (2 devices) installs; the soak holds wave 2 closed meanwhile.
        _watch(page, lambda: _progress(page)[0] == (2, 2), seen)
        check_page(page, "live-rollout-wave-1")
        pause_in_page(page, rollout, "checking the lab first")
        time.sleep(5)  # longer than the soak: a paused rollout opens nothing
        page.reload()
        assert (
            _progress(page)[1][0] == 0 and page.locator("#rollout-state").inner_text() == "paused"
        )
        check_page(page, "live-rollout-paused")
        page.get_by_text("Resume…").click()
        page.get_by_label(f"I confirm: resume rollout {rollout}").check()
        page.get_by_role("button", name="Resume rollout").click()
        _watch(page, lambda: page.locator("#rollout-state").inner_text() == "completed", seen, 90)
        check_page(page, "live-rollout-completed")
        # Wave by wave: each wave filled while the next was still empty.
        progress = [p for _s, p in seen]
        for wave in range(2):
            assert any(p[wave][0] == p[wave][1] and p[wave + 1][0] == 0 for p in progress), wave
        assert progress[-1] == [(2, 2), (8, 8), (10, 10)]
        assert set(live.fleet.active_versions("chat").values()) == {"2.0.0"}
        page.goto(live.url + "/console/audit")
        assert "checking the lab first" in page.content()
        check_page(page, "live-audit")
        page.set_viewport_size({"width": 1440, "height": 900})
        page.goto(f"{live.url}/console/rollouts/{rollout}")
        check_page(page, "live-rollout-laptop")


def _stored(live: LiveHub) -> int:
    with live.hub.engine.connect() as connection:
        return len(connection.execute(select(TELEMETRY.c.pseudonym)).all())


def test_a_tripped_health_gate_is_shown_with_its_reason(tmp_path: Path, browser_page: Any) -> None:
    page = browser_page
    doubled = DeviceProfile(Behaviour(error_rate=0.1)).with_version("2.0.0", error_rate=0.2)
    with live_hub(tmp_path / "hub", doubled) as live:
        live.clock.offset = timedelta(hours=-1)  # the wave opened an hour ago
        log_in(page, live.url)
        rollout = _create(page, live.url, "10,10", "counts", soak="7200", gate="0.05")
        seen: list[Any] = []
        _watch(page, lambda: _progress(page)[0] == (10, 10), seen)
        assert page.locator("#rollout-state").inner_text() == "waiting_gate"
        # Every device reports its last closed hour; once stored, the soak is over.
        sent = live.fleet.send_telemetry(requests=40)
        live.fleet.wait_until(lambda: _stored(live) == sent, 30, f"{sent} reports stored")
        live.clock.offset = timedelta(hours=2)
        _watch(page, lambda: page.locator("#rollout-state").inner_text() == "paused", seen)
        why = page.locator("#waiting-for").inner_text()
        assert "error_rate_increase" in why, why
        failing = page.locator("tr.verdict-fail")
        assert failing.count() >= 1 and "error_rate_increase" in failing.first.inner_text()
        assert store.get(live.hub.engine, rollout).wave == 0  # wave 2 never opened
        page.reload()
        assert page.locator(".chart .uplot").count() == 2  # new against old, drawn
        check_page(page, "live-rollout-gate-failed")
        page.goto(live.url + "/console/telemetry")
        assert page.locator("#releases-health tbody tr").count() == 2
        check_page(page, "live-telemetry")
