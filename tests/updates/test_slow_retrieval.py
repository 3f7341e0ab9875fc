"""Slow retrieval: a mirror that trickles bytes, never slow enough to trip a read timeout.

The server is real HTTP on loopback and serves the honest repository; for the files the
test names it sends a few bytes at a time with pauses between. The agent must give up
within its configured grace, say why, and install nothing.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.protocol import chunk_path
from edge_agent.updates.errors import DownloadFailed
from edge_agent.updates.fetchers import HttpFetcher
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.source import ReleaseSource
from tests.updates.conftest import Fleet

GRACE_SECONDS = 1.0
MIN_BYTES_PER_SECOND = 1024
TRICKLE = (16, 0.05)  # 16 bytes every 50 ms: 320 bytes/s, a fraction of the minimum


@contextmanager
def mirror(root: Path, trickled: tuple[str, ...]) -> Iterator[str]:
    """Serve `root` over HTTP on loopback, trickling the files whose path ends with one of
    `trickled`; yields the base URL."""
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = root / self.path.lstrip("/")
            if ".." in self.path or not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not self.path.endswith(trickled):
                self.wfile.write(data)
                return
            size, pause = TRICKLE
            try:
                for start in range(0, len(data), size):
                    if stop.wait(pause):
                        return
                    self.wfile.write(data[start : start + size])
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return  # the agent gave up, as it should

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def update_from(fleet: Fleet, url: str) -> str | None:
    fetcher = HttpFetcher(
        min_bytes_per_second=MIN_BYTES_PER_SECOND, slow_grace_seconds=GRACE_SECONDS
    )
    with ReleaseSource(url, fleet.device / "trust", fetcher) as source:
        manager = UpdateManager(fleet.store, fleet.device / "update-state.json")
        return manager.update(source, "tiny").version


@pytest.fixture
def device_at_1(fleet: Fleet) -> Fleet:
    """Device runs 1.0.0; the hub has just published 1.1.0 (one new chunk)."""
    fleet.update()
    fleet.repo.publish(fleet.variant("v2", top_k=7), "tiny", "1.1.0")
    return fleet


def test_the_mirror_serves_at_full_speed_what_it_does_not_trickle(device_at_1: Fleet) -> None:
    with mirror(device_at_1.repo.root, trickled=("/nothing",)) as url:
        assert update_from(device_at_1, url) == "1.1.0"


@pytest.mark.parametrize("what", ["timestamp", "chunk"])
def test_a_trickling_mirror_is_given_up_within_the_grace(device_at_1: Fleet, what: str) -> None:
    fleet = device_at_1
    manifest = fleet.repo.manifest("tiny", "1.1.0")
    (new_chunk,) = fleet.store.missing_chunks(manifest)
    # The chunk is big enough that the trickle would take far longer than the grace.
    assert manifest.unique_chunks()[new_chunk] > 4 * TRICKLE[0] / TRICKLE[1] * GRACE_SECONDS
    if what == "timestamp":
        path, doing = "metadata/timestamp.json", "refreshing metadata"
    else:
        path, doing = chunk_path(new_chunk), f"fetching chunk {new_chunk[:12]}..."
    before = fleet.snapshot()
    with mirror(fleet.repo.root, trickled=(f"/{path}",)) as url:
        started = time.monotonic()
        with pytest.raises(DownloadFailed) as refused:
            update_from(fleet, url)
        elapsed = time.monotonic() - started
    assert GRACE_SECONDS < elapsed < GRACE_SECONDS + 1.5
    expected = (
        rf"{re.escape(f'{doing}: {url}{path}')} sent \d+ bytes in \d+\.\d s of waiting, slower "
        rf"than the {MIN_BYTES_PER_SECOND} bytes/s this agent accepts \(slow retrieval\); "
        r"retry when the link is back"
    )
    assert re.fullmatch(expected, str(refused.value)), str(refused.value)
    assert fleet.snapshot() == before
    active = fleet.store.active("tiny")
    assert active is not None and active.version == "1.0.0"
