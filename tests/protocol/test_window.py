"""Maintenance windows in the signed desired state: covered by the signature, optional (old
states unchanged), checked when read, and the times they open and close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.protocol import (
    BadSignature,
    MaintenanceWindow,
    WindowError,
    check_opens,
    sign_desired,
)
from edge_agent.protocol.desired import canonical_json
from tests.protocol.test_desired import DIRECTOR, NOW, state, verify

NIGHTS = MaintenanceWindow(cron="0 2 * * mon-fri", duration_minutes=180, timezone="Europe/Berlin")


def test_the_window_travels_signed_and_verifies() -> None:
    verified = verify(sign_desired(state(window=NIGHTS), DIRECTOR))
    assert verified.window == NIGHTS


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("cron", "* * * * *"),  # always open: the attack an installer at noon would want
        ("duration_minutes", 10_080),
        ("timezone", "Pacific/Kiritimati"),
    ],
)
def test_a_window_altered_after_signing_is_refused(field: str, value: Any) -> None:
    signed = sign_desired(state(window=NIGHTS), DIRECTOR)
    altered = {**signed.signed, "window": {**signed.signed["window"], field: value}}
    with pytest.raises(BadSignature):
        verify(signed.model_copy(update={"signed": altered}))


def test_removing_the_window_after_signing_is_refused() -> None:
    signed = sign_desired(state(window=NIGHTS), DIRECTOR)
    stripped = {k: v for k, v in signed.signed.items() if k != "window"}
    with pytest.raises(BadSignature):
        verify(signed.model_copy(update={"signed": stripped}))


def test_a_state_without_window_signs_the_same_bytes_as_before_windows() -> None:
    signed = sign_desired(state(), DIRECTOR)
    assert "window" not in signed.signed and "rollbacks" not in signed.signed
    # Before windows and rollback statements a state had neither field.
    old_style = state().model_dump(mode="json", exclude={"window", "rollbacks"})
    assert canonical_json(signed.signed) == canonical_json(old_style)
    assert verify(signed).window is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"cron": "0 2 * * 1"}, "names (mon-fri, sun)"),
        ({"cron": "0 2 * *"}, "five fields"),
        ({"cron": "0 25 * * *"}, "not valid"),
        ({"timezone": "Mars/Olympus"}, "unknown"),
        ({"duration_minutes": 0}, "greater than or equal to 1"),
    ],
)
def test_a_bad_window_is_refused_naming_the_problem(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(
        ValidationError, match=r"(?s)" + says.replace("(", r"\(").replace(")", r"\)")
    ):
        MaintenanceWindow(**({"cron": "0 2 * * *", "duration_minutes": 60} | fields))


def test_open_and_next_open_follow_the_time_zone() -> None:
    # Monday 2030-01-07 00:30 UTC = 01:30 Berlin: closed, opens 02:00 Berlin = 01:00 UTC.
    monday = datetime(2030, 1, 7, 0, 30, tzinfo=UTC)
    assert not NIGHTS.is_open(monday)
    assert NIGHTS.next_open(monday) == datetime(2030, 1, 7, 1, 0, tzinfo=UTC)
    inside = datetime(2030, 1, 7, 3, 59, tzinfo=UTC)
    assert NIGHTS.is_open(inside)
    assert NIGHTS.open_until(inside) == datetime(2030, 1, 7, 4, 0, tzinfo=UTC)
    assert not NIGHTS.is_open(datetime(2030, 1, 7, 4, 0, tzinfo=UTC))  # closing is exclusive
    saturday = datetime(2030, 1, 5, 1, 30, tzinfo=UTC)
    assert NIGHTS.next_open(saturday) == datetime(2030, 1, 7, 1, 0, tzinfo=UTC)


def test_a_window_that_never_opens_is_refused_by_check_opens() -> None:
    never = MaintenanceWindow(cron="0 0 30 2 *", duration_minutes=60)
    assert never.next_open(NOW) is None
    with pytest.raises(WindowError, match="never opens"):
        check_opens(never, NOW)
    leap = MaintenanceWindow(cron="0 0 29 feb *", duration_minutes=60)
    assert check_opens(leap, NOW) == datetime(2032, 2, 29, tzinfo=UTC)


def test_next_open_is_now_inside_the_window() -> None:
    always = MaintenanceWindow(cron="* * * * *", duration_minutes=1)
    assert always.next_open(NOW + timedelta(seconds=30)) == NOW + timedelta(seconds=30)
