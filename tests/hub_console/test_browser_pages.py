"""The release, telemetry and device pages in Debian's headless Chromium: screenshots (tablet
and laptop width) and an axe scan of each, and revoking a release through its form."""

from __future__ import annotations

from typing import Any

from tests.hub_console.conftest import check_page, log_in
from tests.hub_console.full import FullConsole, full_console_fixture  # noqa: F401 (fixture "full")
from tests.hub_telemetry.helpers import busy, store_all


def test_release_telemetry_and_device_pages(full: FullConsole, browser_page: Any) -> None:
    page = browser_page
    # A day of hourly telemetry: 6 devices on 1.0.0 (shown), 3 on 2.0.0 (suppressed).
    store_all(full.engine, [busy(d, hour=h) for h in range(24) for d in range(6)])
    store_all(full.engine, [busy(d, hour=h, version="2.0.0") for h in range(24) for d in range(3)])
    log_in(page, full.url, "olga")
    page.goto(full.url + "/console/releases")
    check_page(page, "releases")
    page.get_by_role("link", name="2.0.0").click()
    assert "Shared with the previous release" in page.content()
    check_page(page, "release")
    page.goto(full.url + "/console/telemetry?model=chat&days=7")
    assert page.locator(".chart .uplot").count() == 3
    assert page.locator("tr.suppressed").count() > 0
    check_page(page, "telemetry")
    page.goto(full.url + "/console/devices/box-03")
    assert page.locator("#certificates tbody tr").count() == 1
    page.get_by_text("Revoke…").click()
    check_page(page, "device-revoke")
    page.goto(full.url + "/console/releases/chat/2.0.0")
    page.get_by_text("Revoke…").click()
    page.get_by_label("Reason (kept in the audit log)").fill("tokenizer regression")
    page.get_by_label("I confirm: revoke chat 2.0.0").check()
    page.get_by_role("button", name="Revoke release").click()
    page.wait_for_url(full.url + "/console/releases")
    assert full.repository is not None and full.repository.index().versions("chat") == ["1.0.0"]
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(full.url + "/console/audit")
    assert "tokenizer regression" in page.content()
    check_page(page, "audit-revoked-release")
