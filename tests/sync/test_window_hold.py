"""The desired state that waits for its maintenance window is kept across a restart, and
only while it is still the last one the device accepted and has not expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.protocol import DesiredRelease, DesiredState, MaintenanceWindow
from edge_agent.sync.window import HeldDesired

NOW = datetime(2030, 1, 2, tzinfo=UTC)


def _state(sequence: int = 7) -> DesiredState:
    return DesiredState(
        device_id="dev-1",
        sequence=sequence,
        issued_at=NOW - timedelta(hours=1),
        expires=NOW + timedelta(days=7),
        models={"tiny": DesiredRelease(version="1.1.0", manifest="tiny/1.1.0/manifest.json")},
        window=MaintenanceWindow(cron="0 2 * * sat", duration_minutes=120),
    )


def test_a_held_state_comes_back_after_a_restart(tmp_path: Path) -> None:
    HeldDesired(tmp_path).save(_state())
    assert HeldDesired(tmp_path).load(7, NOW) == _state()
    assert (tmp_path / "desired-waiting-for-window.json").stat().st_mode & 0o077 == 0


def test_a_superseded_or_expired_held_state_is_dropped(tmp_path: Path) -> None:
    held = HeldDesired(tmp_path)
    held.save(_state())
    assert held.load(8, NOW) is None  # a newer state was accepted since
    assert not held.path.exists()
    held.save(_state())
    assert held.load(7, NOW + timedelta(days=8)) is None
    assert not held.path.exists()


def test_an_unreadable_held_file_is_ignored(tmp_path: Path) -> None:
    held = HeldDesired(tmp_path)
    held.path.write_text("{not json")
    assert held.load(7, NOW) is None
