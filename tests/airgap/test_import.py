"""`edge-agent import`: a stick installs with the online path's guarantees, and a device
whose online metadata expired still accepts a valid authorisation, never an older release."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from edge_agent.updates.errors import Refused, RepositoryError
from edge_agent.updates.health import check_model
from tests.airgap.conftest import DEVICE, Site, now


def variant(site: Site, name: str) -> Path:
    """A copy of the model with one changed file: a release that shares most chunks."""
    folder = site.tmp / name
    shutil.copytree(site.model_dir, folder)
    path = folder / "genai_config.json"
    config = json.loads(path.read_text())
    config["search"]["max_length"] = 77
    path.write_text(json.dumps(config, indent=4))
    return folder


def test_stick_installs_and_the_model_generates(site: Site) -> None:
    site.export(site.tmp / "stick")
    report = site.import_(site.tmp / "stick")
    assert report.errors == []
    assert site.active() == "1.0.0"
    active = site.store.active("tiny")
    assert active is not None
    check_model(active.path)
    assert not (site.device / "import-staging").exists()


def test_expired_online_metadata_with_a_valid_authorisation(site: Site) -> None:
    """The hub signed the metadata 5 days ago (timestamp valid 1 day): the online path
    refuses it, the stick issued then (valid 30 days) installs."""
    issued = now() - timedelta(days=5)
    site.repo.refresh(now=issued, force=True)
    site.export(site.tmp / "stick", now=issued)
    from edge_agent.updates.fetchers import fetcher_for
    from edge_agent.updates.source import ReleaseSource

    base, fetcher = fetcher_for(str(site.repo.root))
    with (
        pytest.raises(RepositoryError, match="ExpiredMetadataError"),
        ReleaseSource(base, site.device / "trust", fetcher) as online,
    ):
        site.manager().update(online, "tiny")
    assert site.active() is None

    report = site.import_(site.tmp / "stick")
    assert report.errors == []
    assert site.active() == "1.0.0"


def test_expired_authorisation_is_refused(site: Site) -> None:
    before = site.untouched()
    site.export(site.tmp / "stick", now=now() - timedelta(days=31))
    with pytest.raises(Refused, match="expired"):
        site.import_(site.tmp / "stick")
    assert site.active() is None
    assert site.untouched() == before


def test_a_clock_set_back_does_not_revive_an_expired_stick(site: Site) -> None:
    site.export(site.tmp / "new-stick")
    site.import_(site.tmp / "new-stick")
    site.export(site.tmp / "old-stick", now=now() - timedelta(days=31), validity=timedelta(days=1))
    with pytest.raises(Refused, match="clock is wrong or the stick is old"):
        site.import_(site.tmp / "old-stick", now=now() - timedelta(days=31))


def test_older_release_is_refused_floors_stay(site: Site) -> None:
    site.repo.publish(variant(site, "v2"), "tiny", "2.0.0")
    site.export(site.tmp / "stick-new", versions=("2.0.0",))
    assert site.import_(site.tmp / "stick-new").errors == []
    assert site.active() == "2.0.0"
    site.export(site.tmp / "stick-old", versions=("1.0.0",))
    report = site.import_(site.tmp / "stick-old")
    assert len(report.errors) == 1
    assert "older than" in report.errors[0]
    assert site.active() == "2.0.0"


def test_stick_for_another_site_is_refused(site: Site) -> None:
    before = site.untouched()
    site.export(site.tmp / "stick", devices=("ship-3-ws-1",))
    with pytest.raises(Refused, match="does not name this device"):
        site.import_(site.tmp / "stick", device_id=DEVICE)
    assert site.active() is None
    assert site.untouched() == before


def test_a_site_holding_the_previous_release_gets_only_the_new_chunks(site: Site) -> None:
    manifest = site.repo.publish(variant(site, "v2"), "tiny", "2.0.0")
    full = site.export(site.tmp / "full", versions=("2.0.0",))
    delta = site.export(site.tmp / "delta", versions=("2.0.0",), held={DEVICE: [("tiny", "1.0.0")]})
    assert full.chunk_bytes == sum(manifest.unique_chunks().values())
    assert 0 < delta.chunk_bytes < full.chunk_bytes / 10
    site.export(site.tmp / "first")
    site.import_(site.tmp / "first")
    assert site.import_(site.tmp / "delta").errors == []
    assert site.active() == "2.0.0"
