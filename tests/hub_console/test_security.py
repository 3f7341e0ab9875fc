"""The console's protections, attacked for real over HTTP: forged and cross-site posts,
a viewer's posts, ended sessions, password guessing. Each proves the refusal by its effect
on the database (the rollout's state, the audit log), not only by the status code."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from sqlalchemy import Engine

from hub.console import accounts
from hub.console.models import ConsoleUser
from hub.db import session
from hub.rollouts import audit, store
from tests.hub_console.conftest import PASSWORD, Console, make_rollout


def _state(engine: Engine, rollout_id: int) -> str:
    return store.get(engine, rollout_id).state


def _actions(engine: Engine) -> list[str]:
    return [e.action for e in audit.entries(engine)]


PAUSE = {"reason": "checking the shop tills", "confirm": "yes"}


def test_pages_need_a_session_and_carry_strict_headers(console: Console) -> None:
    anonymous = httpx.get(console.url + "/console/", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"
    login = httpx.get(console.url + "/console/login")
    csp = login.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert login.headers["x-frame-options"] == "DENY"
    for path in ("/console/", "/console/rollouts", "/console/audit", "/console/devices/box-01"):
        assert httpx.get(console.url + path).status_code == 303, path


def test_session_cookie_is_secure_httponly_strict(console: Console) -> None:
    response = console.browser().login("olga")
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("__Host-edge-hub-session=")
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "secure", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)


def test_posts_without_the_csrf_token_are_refused(console: Console) -> None:
    rollout = make_rollout(console.engine)
    olga = console.browser("olga")
    before = _actions(console.engine)
    missing = olga.post(f"/console/rollouts/{rollout}/pause", PAUSE, csrf=False)
    assert missing.status_code == 403 and "CSRF" in missing.text
    olga.csrf = "forged-" + (olga.csrf or "")
    assert olga.post(f"/console/rollouts/{rollout}/pause", PAUSE).status_code == 403
    assert _state(console.engine, rollout) == "created"
    assert _actions(console.engine) == before
    olga.get(f"/console/rollouts/{rollout}")  # the page's real token
    done = olga.post(f"/console/rollouts/{rollout}/pause", PAUSE)
    assert done.status_code == 303, done.text
    assert _state(console.engine, rollout) == "paused"
    last = audit.entries(console.engine)[-1]
    assert (last.actor, last.action, last.reason) == ("olga", "pause", "checking the shop tills")


def test_a_cross_site_post_is_refused_even_with_the_token(console: Console) -> None:
    rollout = make_rollout(console.engine)
    olga = console.browser("olga")
    olga.get(f"/console/rollouts/{rollout}")
    forged = olga.client.post(
        console.url + f"/console/rollouts/{rollout}/pause",
        data={**PAUSE, "csrf_token": olga.csrf or ""},
        headers={
            **olga.headers(),
            "Origin": "https://evil.example",
            "Sec-Fetch-Site": "cross-site",
        },
    )
    assert forged.status_code == 403
    assert _state(console.engine, rollout) == "created"


def test_a_viewer_sees_no_actions_and_its_forged_posts_are_refused(console: Console) -> None:
    rollout = make_rollout(console.engine)
    vera = console.browser("vera")
    page = vera.get(f"/console/rollouts/{rollout}")
    assert page.status_code == 200 and "Rollout " in page.text
    assert f"/console/rollouts/{rollout}/pause" not in page.text
    assert "New rollout" not in vera.get("/console/rollouts").text
    for action in ("pause", "abort", "rollback", "approve"):
        refused = vera.post(f"/console/rollouts/{rollout}/{action}", PAUSE)
        assert refused.status_code == 403 and "vera (viewer) may not" in refused.text
    created = vera.post(
        "/console/rollouts/new", {"model": "chat", "version": "2.0.0", "group": "shop"}
    )
    assert created.status_code == 403
    assert _state(console.engine, rollout) == "created"
    assert len(store.list_rollouts(console.engine)) == 1


def test_logout_ends_the_session_on_the_server(console: Console) -> None:
    olga = console.browser("olga")
    assert olga.get("/console/").status_code == 200
    stolen = olga.cookie
    out = olga.post("/console/logout", {})
    assert out.status_code == 303
    olga.cookie = stolen  # the old cookie, replayed
    assert olga.get("/console/").status_code == 303
    rollout = make_rollout(console.engine)
    assert olga.post(f"/console/rollouts/{rollout}/pause", PAUSE).status_code == 401
    assert _state(console.engine, rollout) == "created"


def test_disabling_a_user_ends_its_sessions(console: Console) -> None:
    olga, vera = console.browser("olga"), console.browser("vera")
    accounts.set_disabled(console.engine, "olga")
    assert olga.get("/console/").status_code == 303
    assert olga.login("olga").status_code == 401
    # A session row that outlives its account's disabling (flag set by hand) counts for nothing.
    with session(console.engine) as db:
        user = db.get(ConsoleUser, "vera")
        assert user is not None
        user.disabled = True
    assert vera.get("/console/").status_code == 303


def test_repeated_wrong_passwords_lock_the_account(console: Console) -> None:
    guesser = console.browser()
    for attempt in range(accounts.MAX_FAILURES):
        assert guesser.login("adam", f"guess number {attempt}").status_code == 401
    locked = guesser.login("adam", PASSWORD)
    assert locked.status_code == 401 and "locked" in locked.text
    assert guesser.cookie is None
    with session(console.engine) as db:
        user = db.get(ConsoleUser, "adam")
        assert user is not None and user.locked_until is not None
        assert user.locked_until > datetime.now(UTC)
    accounts.set_password(console.engine, "adam", PASSWORD)  # an admin unlocks it
    assert guesser.login("adam").status_code == 303


def test_login_attempts_per_address_are_limited(console: Console) -> None:
    guesser = console.browser()
    codes = [guesser.login(f"nobody{i}", "wrong password").status_code for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    assert guesser.login("olga").status_code == 429  # even the right password, for now


def test_the_api_takes_a_session_token_as_bearer_with_its_role(console: Console) -> None:
    spec = {"model": "chat", "version": "2.0.0", "target": {"group": "shop"}, "wave_percent": [100]}
    vera, olga = console.browser("vera"), console.browser("olga")
    api = console.url + "/api/v1/rollouts"
    as_viewer = httpx.post(api, json=spec, headers={"Authorization": f"Bearer {vera.cookie}"})
    assert as_viewer.status_code == 403
    # The cookie alone never authenticates the API: another site's page could send it.
    assert httpx.post(api, json=spec, headers=olga.headers()).status_code == 401
    assert store.list_rollouts(console.engine) == []
    as_operator = httpx.post(api, json=spec, headers={"Authorization": f"Bearer {olga.cookie}"})
    assert as_operator.status_code == 201, as_operator.text
