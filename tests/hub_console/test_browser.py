"""The console in Debian's headless Chromium (Playwright): log in through the form, see the
fleet, pause a rollout with a reason and resume it, find both in the audit log, log out; a
viewer's page has no action buttons. Each page gets an axe accessibility scan (serious and
critical findings fail) and a screenshot under the folder the test prints."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import playwright.sync_api as playwright_api  # the dev extra installs it
import pytest
from sqlalchemy import Engine

from hub.rollouts import store
from hub.rollouts.spec import RolloutSpec
from tests.hub_console.conftest import PASSWORD, Console
from tests.hub_rollouts.conftest import releases
from tests.needs import need

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"


@pytest.fixture(autouse=True)
def _chromium() -> None:
    need(shutil.which(CHROMIUM) is not None, "needs Debian's chromium: apt-get install chromium")


@pytest.fixture
def page(console: Console) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots in {SHOTS}")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        # A tablet-sized window; times shown in the operator's zone.
        context = browser.new_context(
            viewport={"width": 1024, "height": 900}, timezone_id="Europe/Berlin"
        )
        opened = context.new_page()
        refused: list[str] = []
        opened.on(
            "console",
            # A 4xx answer is logged too (the refused form, the absent favicon): not a fault.
            lambda m: (
                refused.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        yield opened
        assert refused == [], f"the pages broke their CSP or scripts: {refused}"
        context.close()
        browser.close()


def _check(page: Any, name: str) -> None:
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


def _login(page: Any, url: str, name: str) -> None:
    page.goto(url + "/console/")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(url + "/console/")


def _rollout(engine: Engine) -> int:
    spec = RolloutSpec.model_validate(
        {
            "model": "chat",
            "version": "2.0.0",
            "target": {"group": "shop"},
            "wave_percent": [50, 100],
        }
    )
    created = store.create(engine, spec, "adam", releases)
    assert created.id is not None
    return created.id


def test_operator_pauses_and_resumes_a_rollout(console: Console, page: Any) -> None:
    rollout = _rollout(console.engine)
    page.goto(console.url + "/console/")
    _check(page, "login")
    _login(page, console.url, "olga")
    assert page.locator(".tile").first.is_visible()
    assert "20 device(s)" in page.content()
    _check(page, "fleet")
    page.get_by_role("link", name="box-03").click()
    assert "does not have it, by design" in page.content()
    _check(page, "device")
    page.goto(f"{console.url}/console/rollouts/{rollout}")
    _check(page, "rollout")
    page.get_by_text("Pause…").click()
    page.get_by_label("Reason (kept in the audit log)").first.fill("tills look odd")
    page.get_by_label(f"I confirm: pause rollout {rollout}").check()
    page.get_by_role("button", name="Pause rollout").click()
    assert page.locator("#rollout-state").inner_text() == "paused"
    assert "tills look odd" in page.locator("#waiting-for").inner_text()
    _check(page, "rollout-paused")
    page.get_by_text("Resume…").click()
    page.get_by_label(f"I confirm: resume rollout {rollout}").check()
    page.get_by_role("button", name="Resume rollout").click()
    assert page.locator("#rollout-state").inner_text() != "paused"
    page.goto(f"{console.url}/console/audit")
    assert "tills look odd" in page.content()
    _check(page, "audit")
    page.goto(f"{console.url}/console/rollouts/new")
    page.get_by_label("Model").fill("chat")
    page.get_by_label("Release (version)").fill("9.9.9")
    page.get_by_label("Group").fill("shop")
    page.get_by_role("button", name="Create rollout").click()
    assert "not a published release" in page.content()
    _check(page, "rollout-new-invalid")
    page.get_by_role("button", name="Log out").click()
    page.goto(console.url + "/console/")
    assert page.url.endswith("/console/login")


def test_a_viewer_sees_no_action_buttons(console: Console, page: Any) -> None:
    rollout = _rollout(console.engine)
    _login(page, console.url, "vera")
    page.goto(f"{console.url}/console/rollouts/{rollout}")
    assert page.get_by_role("button", name="Pause rollout").count() == 0
    assert page.get_by_text("Pause…").count() == 0
    _check(page, "rollout-viewer")
