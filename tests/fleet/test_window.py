"""Maintenance windows enforced on the device: a real `edge-agent serve` enrolled with a real
`edge-hub serve` receives a release whose signed desired state carries a window that opens
shortly; it downloads at once, holds activation until the window opens, then activates."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select

from edge_agent.protocol import MaintenanceWindow
from edge_agent.store import ModelStore
from hub import db
from hub.fleet import desired
from hub.fleet.director import DirectorKey
from hub.fleet.models import InstallEventRecord, ReportedModelState
from tests.fleet.processes import active_on_hub, wait_for
from tests.fleet.test_hub_and_agent import Hub, enrolled_on_first_release, running_hub

# The device must have the state and have downloaded before the window opens.
LEAD_S = 35


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Hub]:
    yield from running_hub(
        db.sqlite_url(tmp_path / "hub.sqlite3"), tmp_path, tiny_model_dir, "managed"
    )


def _window_opening_soon(now: datetime) -> tuple[MaintenanceWindow, datetime]:
    """A window (UTC) that opens at the first whole minute at least LEAD_S from now."""
    start = (now + timedelta(seconds=LEAD_S + 60)).replace(second=0, microsecond=0)
    cron = f"{start.minute} {start.hour} {start.day} {start.month} *"
    return MaintenanceWindow(cron=cron, duration_minutes=2), start


def _hub_rows(engine: object, table: type) -> list:  # type: ignore[type-arg]
    with Session(engine) as session:  # type: ignore[arg-type]
        return list(session.exec(select(table)).all())


def test_the_agent_downloads_at_once_and_activates_only_in_its_window(
    hub: Hub, tmp_path: Path
) -> None:
    device = enrolled_on_first_release(hub, tmp_path)
    engine = db.make_engine(hub.database_url)
    try:
        device.serve("tiny")
        wait_for(lambda: active_on_hub(hub.database_url, "dev-1") == "1.0.0", "first report")

        window, opens = _window_opening_soon(datetime.now(UTC))
        key = DirectorKey(hub.root / "keys").private_key()
        desired.assign(
            engine, key, ["dev-1"], "tiny", "1.1.0", listed=lambda _m, _v: True, window=window
        )

        def downloaded() -> bool:
            events = _hub_rows(engine, InstallEventRecord)
            return any(e.event == "downloaded" and e.version == "1.1.0" for e in events)

        wait_for(downloaded, f"the release downloaded before its window\n{device.log()}", 30)
        assert datetime.now(UTC) < opens, "too slow: the window opened before the check"
        (state,) = _hub_rows(engine, ReportedModelState)
        assert state.active == "1.0.0" and state.pending == "1.1.0"
        store = ModelStore(device.data)
        active = store.active("tiny")
        assert active is not None and active.version == "1.0.0"

        # Held until the window opens, however long the device runs meanwhile.
        wait_for(lambda: datetime.now(UTC) >= opens - timedelta(seconds=2), "the eve", 120)
        active = store.active("tiny")
        assert active is not None and active.version == "1.0.0"
        assert active_on_hub(hub.database_url, "dev-1") == "1.0.0"

        wait_for(
            lambda: active_on_hub(hub.database_url, "dev-1") == "1.1.0",
            f"activation inside the window\n{device.log()}",
            60,
        )
        active = store.active("tiny")
        assert active is not None and active.version == "1.1.0"
        activated = [
            e.at
            for e in _hub_rows(engine, InstallEventRecord)
            if e.event == "healthy" and e.version == "1.1.0"
        ]
        assert activated and min(activated) >= opens
    finally:
        device.stop()
        engine.dispose()
