"""The serving hub's refresh job: runs at once, then on its interval, and logs; its telemetry
roll-up job runs at once too."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from tuf.api.metadata import Metadata

from edge_agent.scheduling import new_scheduler
from hub import db
from hub.registry.repository import ReleaseRepository
from hub.scheduler import add_refresh_job, add_rollup_job, refresh_once
from hub.telemetry.models import TELEMETRY_DAILY
from tests.hub_telemetry.helpers import busy, store_all


def spoil_timestamp(repo: ReleaseRepository) -> None:
    """Sign the timestamp with the wrong role's key: the refresh must notice and re-sign."""
    path = repo.root / "metadata" / "timestamp.json"
    md = Metadata.from_bytes(path.read_bytes())
    md.sign(repo.signer("snapshot"))
    path.write_bytes(md.to_bytes())


def test_refresh_once_logs_what_it_re_signed(
    repo: ReleaseRepository, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hub.scheduler")
    assert refresh_once(lambda: repo) == []
    spoil_timestamp(repo)
    assert refresh_once(lambda: repo) == ["timestamp"]
    assert "re-signed timestamp metadata" in caplog.text


def test_refresh_once_survives_a_broken_repository(
    repo: ReleaseRepository, caplog: pytest.LogCaptureFixture
) -> None:
    (repo.root / "metadata" / "timestamp.json").unlink()
    assert refresh_once(lambda: ReleaseRepository.open(repo.root, repo.keys_dir)) == []
    assert "refreshing the release metadata failed" in caplog.text
    assert "timestamp.json: missing" in caplog.text


def test_the_job_runs_when_started(repo: ReleaseRepository) -> None:
    spoil_timestamp(repo)
    before = (repo.root / "metadata" / "timestamp.json").read_bytes()
    jobs = new_scheduler()
    add_refresh_job(jobs, lambda: ReleaseRepository.open(repo.root, repo.keys_dir), 3600)
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while (repo.root / "metadata" / "timestamp.json").read_bytes() == before:
            assert time.monotonic() < deadline, "the refresh job did not run"
            time.sleep(0.05)
    finally:
        jobs.shutdown(wait=True)
    assert repo.refresh() == []


def test_the_rollup_job_summarises_closed_days_when_started(tmp_path: Path) -> None:
    engine = db.make_engine(db.sqlite_url(tmp_path / "hub.sqlite3"))
    db.migrate(engine)
    # Four years before the helpers' T0 (2030): a day that has closed by now.
    store_all(engine, [busy(d, hour=-4 * 365 * 24) for d in range(5)])
    jobs = new_scheduler()
    add_rollup_job(jobs, engine, 3600)
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while not _summarised(engine):
            assert time.monotonic() < deadline, "the roll-up job did not run"
            time.sleep(0.05)
        assert _summarised(engine) == [("1.0.0", 5)]
    finally:
        jobs.shutdown(wait=True)
        engine.dispose()


def _summarised(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        query = select(TELEMETRY_DAILY.c.version, TELEMETRY_DAILY.c.devices)
        return [(str(version), int(devices)) for version, devices in connection.execute(query)]
