"""The console in Debian's headless Chromium (Playwright): log in through the form, see the
fleet, pause a rollout with a reason and resume it, find both in the audit log, log out; a
viewer's page has no action buttons. Each page gets an axe accessibility scan (serious and
critical findings fail) and a screenshot under the folder the test prints."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from hub.console.history import EXPORT_BATCH_ROWS, PAGE_ROWS, AuditFilter, audit_export, audit_page
from hub.db import session
from hub.rollouts import audit
from tests.hub_console.conftest import Console, check_page, log_in, make_rollout, pause_in_page
from tests.hub_telemetry.helpers import T0


def test_operator_pauses_and_resumes_a_rollout(console: Console, browser_page: Any) -> None:
    page = browser_page
    rollout = make_rollout(console.engine, by="adam")
    page.goto(console.url + "/console/")
    check_page(page, "login")
    log_in(page, console.url, "olga")
    assert page.locator(".tile").first.is_visible()
    assert "20 device(s)" in page.content()
    check_page(page, "fleet")
    page.get_by_role("link", name="box-03").click()
    assert "does not have it, by design" in page.content()
    check_page(page, "device")
    page.goto(f"{console.url}/console/rollouts/{rollout}")
    check_page(page, "rollout")
    pause_in_page(page, rollout, "tills look odd")
    check_page(page, "rollout-paused")
    page.get_by_text("Resume…").click()
    page.get_by_label(f"I confirm: resume rollout {rollout}").check()
    page.get_by_role("button", name="Resume rollout").click()
    assert page.locator("#rollout-state").inner_text() != "paused"
    page.goto(f"{console.url}/console/audit")
    assert "tills look odd" in page.content()
    check_page(page, "audit")
    page.goto(f"{console.url}/console/rollouts/new")
    page.get_by_label("Model").fill("chat")
    page.get_by_label("Release (version)").fill("9.9.9")
    page.get_by_label("Group").fill("shop")
    page.get_by_role("button", name="Create rollout").click()
    assert "not a published release" in page.content()
    check_page(page, "rollout-new-invalid")
    page.get_by_role("button", name="Log out").click()
    page.goto(console.url + "/console/")
    assert page.url.endswith("/console/login")


def test_a_viewer_sees_no_action_buttons(console: Console, browser_page: Any) -> None:
    page = browser_page
    rollout = make_rollout(console.engine, by="adam")
    log_in(page, console.url, "vera")
    page.goto(f"{console.url}/console/rollouts/{rollout}")
    assert page.get_by_role("button", name="Pause rollout").count() == 0
    assert page.get_by_text("Pause…").count() == 0
    check_page(page, "rollout-viewer")


def _write_audit(engine: Engine, entries: int) -> None:
    """`entries` pauses, alternating between olga and anna, a second apart (oldest first)."""
    with session(engine) as db:
        for n in range(entries):
            actor = "olga" if n % 2 == 0 else "anna"
            at = T0 + timedelta(seconds=n)
            audit.record(db, actor, "pause", f"rollout/{n}", reason=f"entry {n}", at=at)


def _reasons(page: Any) -> list[str]:
    found: list[str] = page.locator("table tbody tr td:nth-child(5)").all_inner_texts()
    return found


def test_the_audit_log_pages_with_its_filter_and_exports_all_of_it(
    console: Console, browser_page: Any
) -> None:
    page = browser_page
    _write_audit(console.engine, 2 * PAGE_ROWS + 30)  # olga wrote the even ones: 65
    log_in(page, console.url, "vera")
    page.goto(f"{console.url}/console/audit")
    page.get_by_label("User").fill("olga")
    page.get_by_role("button", name="Filter").click()
    newest = [f"entry {n}" for n in range(128, -1, -2)]  # olga's, newest first
    assert _reasons(page) == newest[:PAGE_ROWS]
    assert page.get_by_role("link", name="Newer entries").count() == 0
    check_page(page, "audit-paged")
    page.get_by_role("link", name="Older entries").click()
    # The filter stays with the page: olga's older entries, no one else's.
    assert page.get_by_label("User").input_value() == "olga"
    assert _reasons(page) == newest[PAGE_ROWS:]
    assert page.get_by_role("link", name="Older entries").count() == 0
    page.get_by_role("link", name="Newer entries").click()
    assert _reasons(page) == newest[:PAGE_ROWS]
    # The export holds every entry the filter keeps, not one page, newest first.
    href = page.get_by_role("link", name="Export as CSV").get_attribute("href")
    exported = page.request.get(console.url + href)
    assert exported.ok and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(exported.text())))
    assert rows[0][:5] == ["at", "actor", "action", "object", "reason"]
    assert [r[4] for r in rows[1:]] == newest
    assert {r[1] for r in rows[1:]} == {"olga"}


def test_the_audit_export_streams_the_whole_log_in_batches(console: Console) -> None:
    # More entries than one read of the export: the batches join without a gap or a repeat.
    _write_audit(console.engine, EXPORT_BATCH_ROWS + 7)
    rows = list(audit_export(console.engine, AuditFilter()))
    assert [e.reason for e in rows] == [f"entry {n}" for n in range(EXPORT_BATCH_ROWS + 6, -1, -1)]
    # Past the oldest entry: an empty page that links back to it.
    oldest = rows[-1].id
    assert oldest is not None
    past = audit_page(console.engine, AuditFilter(), before=oldest)
    assert (past.rows, past.older_than, past.newer_than) == ([], None, oldest - 1)
    back = audit_page(console.engine, AuditFilter(), after=past.newer_than)
    assert back.rows[-1].id == oldest and back.newer_than == back.rows[0].id
