"""Updates over HTTP from the hub's artifact server: tokens; the bandwidth cap, on a fake
clock and a single fetch."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.protocol import chunk_path
from edge_agent.updates.errors import AccessDenied
from edge_agent.updates.fetchers import READ_BLOCK_BYTES, HttpFetcher, Throttle
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


class FakeClock:
    """Time that passes only when someone sleeps, or when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def biggest_chunk(fleet: Fleet) -> tuple[str, int]:
    chunks = fleet.repo.manifest("tiny", "1.0.0").unique_chunks()
    return max(chunks.items(), key=lambda item: item[1])


def test_the_bandwidth_cap_paces_a_fetch(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    # One chunk, fetched alone from the real artifact server: the network is instant on
    # the fake clock, so every second that passes is the throttle's.
    server, token = hub
    sha256, size = biggest_chunk(fleet)
    assert size > 2 * READ_BLOCK_BYTES  # several blocks, so the cap applies between them
    cap = 100_000  # bytes per second
    clock = FakeClock()
    fetcher = HttpFetcher(token)
    fetcher.throttle = Throttle(cap, clock=clock, sleep=clock.sleep)
    started = clock.now
    received = 0
    for block in fetcher.fetch(f"{server.url}/{chunk_path(sha256)}"):
        # Handed out only once the time for its bytes and all before has passed.
        received += len(block)
        assert received <= cap * (clock.now - started) + 1e-6
    fetcher.close()
    assert received == size
    assert clock.now - started == pytest.approx(size / cap)


def test_a_link_slower_than_the_cap_waits_one_block_at_most(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    # The throttle counts a block when it arrives, before the network time it took is
    # known here: the first block may wait, after that the slow link itself keeps the pace.
    server, token = hub
    sha256, _size = biggest_chunk(fleet)
    cap = 100_000
    clock = FakeClock()
    fetcher = HttpFetcher(token)
    fetcher.throttle = Throttle(cap, clock=clock, sleep=clock.sleep)
    for block in fetcher.fetch(f"{server.url}/{chunk_path(sha256)}"):
        clock.now += 2 * len(block) / cap  # a link at half the cap
    fetcher.close()
    assert sum(clock.slept) <= READ_BLOCK_BYTES / cap + 1e-9


def test_no_cap_never_waits(fleet: Fleet, hub) -> None:  # type: ignore[no-untyped-def]
    server, token = hub
    sha256, size = biggest_chunk(fleet)
    clock = FakeClock()
    fetcher = HttpFetcher(token)
    fetcher.throttle = Throttle(0, clock=clock, sleep=clock.sleep)
    assert sum(len(b) for b in fetcher.fetch(f"{server.url}/{chunk_path(sha256)}")) == size
    fetcher.close()
    assert clock.slept == []
