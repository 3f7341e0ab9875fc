"""The serving hub's refresh job: runs at once, then on its interval, and logs."""

from __future__ import annotations

import logging
import time

import pytest
from tuf.api.metadata import Metadata

from edge_agent.scheduling import new_scheduler
from hub.registry.repository import ReleaseRepository
from hub.scheduler import add_refresh_job, refresh_once


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
