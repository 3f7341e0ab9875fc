"""Updates over HTTP from the hub's artifact server: tokens, bandwidth cap."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edge_agent.updates.errors import AccessDenied
from edge_agent.updates.fetchers import HttpFetcher
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.source import ReleaseSource
from hub.artifacts.server import create_app
from hub.artifacts.tokens import TokenStore
from tests.conftest import ServerThread
from tests.updates.conftest import Fleet


def update_over_http(fleet: Fleet, url: str, fetcher: HttpFetcher) -> str | None:
    with ReleaseSource(url + "/", fleet.device / "trust", fetcher) as source:
        outcome = UpdateManager(fleet.store, fleet.device / "update-state.json").update(
            source, "tiny"
        )
    return outcome.version


@pytest.fixture
def hub(fleet: Fleet, tmp_path: Path):  # type: ignore[no-untyped-def]
    tokens = TokenStore(tmp_path / "tokens.json")
    with ServerThread(create_app(fleet.repo.root, tokens)) as server:
        yield server, tokens.issue("device-1")


def test_update_over_http_with_a_device_token(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    server, token = hub
    assert update_over_http(fleet, server.url, HttpFetcher(token)) == "1.0.0"


def test_a_wrong_token_is_a_clear_refusal(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    server, _token = hub
    before = fleet.snapshot()
    with pytest.raises(AccessDenied, match=r"refused this device's token \(HTTP 401\)"):
        update_over_http(fleet, server.url, HttpFetcher("edge_wrong"))
    assert fleet.snapshot() == before


def test_bandwidth_cap_is_respected(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    server, token = hub
    cap = 1_000_000  # bytes per second
    started = time.monotonic()
    update_over_http(fleet, server.url, HttpFetcher(token, bandwidth_bytes_per_second=cap))
    elapsed = time.monotonic() - started
    size = fleet.repo.manifest("tiny", "1.0.0").total_bytes
    assert elapsed >= 0.9 * size / cap
