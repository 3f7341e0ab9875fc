"""The REST API over real HTTP: roles, the four-eyes rule, and bad input refused with the
field named and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func
from sqlmodel import select
from starlette.applications import Starlette

from hub.db import session
from hub.rollouts import audit
from hub.rollouts.api import RolloutDesk, api_mount
from hub.rollouts.auth import OperatorTokens, Role
from hub.rollouts.models import Rollout, RolloutDevice, RolloutWave
from tests.conftest import ServerThread
from tests.hub_rollouts.conftest import releases

SPEC: dict[str, Any] = {
    "model": "chat",
    "version": "2.0.0",
    "target": {"group": "shop"},
    "wave_percent": [10, 100],
}


class Api:
    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url, self.tokens = url + "/api/v1", tokens

    def call(self, method: str, path: str, who: str | None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture
def api(engine: Engine, fleet: list[str], key: Ed25519PrivateKey, tmp_path: Path) -> Iterator[Api]:
    store = OperatorTokens(tmp_path / "operators.json")
    tokens = {
        "vera": store.issue("vera", Role.VIEWER),
        "olga": store.issue("olga", Role.OPERATOR),
        "anna": store.issue("anna", Role.APPROVER),
        "adam": store.issue("adam", Role.ADMIN),
    }
    desk = RolloutDesk(engine, releases, lambda: key, [store])
    with ServerThread(Starlette(routes=[api_mount(desk)])) as server:
        yield Api(server.url, tokens)


def stored(engine: Engine) -> list[int]:
    """Rows of every rollout table, and audit entries."""
    with session(engine) as db:
        rows = [
            int(db.exec(select(func.count()).select_from(table)).one())
            for table in (Rollout, RolloutWave, RolloutDevice)
        ]
    return [*rows, len(audit.entries(engine))]


def test_tokens_and_roles(api: Api) -> None:
    assert api.call("GET", "/rollouts", None).status_code == 401
    bad = httpx.get(api.url + "/rollouts", headers={"Authorization": "Bearer eop_nope"})
    assert bad.status_code == 401
    assert api.call("GET", "/rollouts", "vera").json() == []
    refused = api.call("POST", "/rollouts", "vera", json=SPEC)
    assert refused.status_code == 403 and "vera (viewer) may not operate" in refused.text
    created = api.call("POST", "/rollouts", "olga", json=SPEC)
    assert created.status_code == 201, created.text
    rollout = created.json()["id"]
    assert (
        api.call("POST", f"/rollouts/{rollout}/pause", "vera", json={"reason": "x"}).status_code
        == 403
    )
    schema = httpx.get(api.url + "/openapi.json").json()
    assert "/v1/rollouts/{rollout_id}/approve" in schema["paths"]


def test_approval_by_a_second_operator_over_http(api: Api, engine: Engine) -> None:
    spec = {**SPEC, "approval_required": True}
    rollout = api.call("POST", "/rollouts", "anna", json=spec).json()["id"]
    from hub.rollouts.driver import Driver
    from hub.rollouts.health import telemetry_query

    Driver(engine, lambda: Ed25519PrivateKey.generate(), releases, telemetry_query(engine, 5)).step(
        rollout
    )
    olga = api.call("POST", f"/rollouts/{rollout}/approve", "olga", json={})
    assert olga.status_code == 403  # an operator, not an approver
    own = api.call("POST", f"/rollouts/{rollout}/approve", "anna", json={})
    assert own.status_code == 409 and "second operator" in own.json()["error"]["message"]
    other = api.call("POST", f"/rollouts/{rollout}/approve", "adam", json={"reason": "ok"})
    assert other.status_code == 200 and other.json() == {"state": "running"}
    log = api.call("GET", f"/rollouts/{rollout}/audit", "vera").json()
    assert [(e["action"], e["actor"]) for e in log][-1] == ("approve", "adam")


def test_a_reason_is_required_for_pause_abort_rollback(api: Api) -> None:
    rollout = api.call("POST", "/rollouts", "olga", json=SPEC).json()["id"]
    for action in ("pause", "abort", "rollback"):
        refused = api.call("POST", f"/rollouts/{rollout}/{action}", "olga", json={})
        assert refused.status_code == 409 and "needs a reason" in refused.text
    paused = api.call("POST", f"/rollouts/{rollout}/pause", "olga", json={"reason": "lunch"})
    assert paused.json() == {"state": "paused"}
    status = api.call("GET", f"/rollouts/{rollout}", "vera").json()
    assert status["state"] == "paused" and "lunch" in status["waiting_for"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"version": "9.9.9"}, "version", "not a published release"),
        ({"version": "1.5.0"}, "version", "revoked"),
        ({"target": {}}, "target", "the target is empty"),
        ({"target": {"group": "nobody"}}, "target.group", "has no devices"),
        ({"target": {"devices": ["box-99"]}}, "target.devices", "no enrolled device"),
        ({"wave_percent": [10, 50]}, "wave_percent", "do not add up"),
        ({"wave_percent": [50, 10, 100]}, "wave_percent", "ascend"),
        ({"wave_percent": None, "wave_counts": [5, 5]}, "wave_counts", "do not add up"),
        ({"install": {"min_success_ratio": 1.5}}, "install.min_success_ratio", "less than"),
        ({"health": {"max_tokens_per_second_drop": -1}}, "health.max_tokens_per_second_drop", ""),
        ({"pacing": {"per_minute": 0}}, "pacing.per_minute", "greater than"),
        (
            {"window": {"cron": "0 3 30 2 *", "duration_minutes": 60}},
            "window",
            "never opens",
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_stored(
    api: Api, engine: Engine, change: dict[str, Any], field: str, words: str
) -> None:
    before = stored(engine)
    response = api.call("POST", "/rollouts", "olga", json={**SPEC, **change})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    fields = [f["field"] for f in error.get("fields", [])] or [error.get("field")]
    assert field in fields
    assert words in error["message"]
    assert stored(engine) == before == [0, 0, 0, 0]
