"""Finding peers by mDNS/DNS-SD (zeroconf confined to 127.0.0.1, so nothing leaves the
machine). The peer list a USB bundle carries: tests/airgap/test_site_peers.py.

zeroconf is bound to the loopback interface alone (`interfaces=["127.0.0.1"]`): its
multicast goes out and comes back on `lo` only. Where the machine's loopback cannot carry
multicast, the loopback test fails saying so; the record handling is tested below anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edge_agent.updates.peer_discovery import Announcement, PeerRecord, discover, peer_url
from tests.needs import need
from tests.ports import free_port

FLEET = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
LOOPBACK = ["127.0.0.1"]


def record(**changes: object) -> PeerRecord:
    fields: dict[str, object] = {
        "name": "a._edge-chunks._tcp.local.",
        "addresses": ["10.0.0.7"],
        "port": 8765,
        "properties": {b"fleet": FLEET.encode(), b"v": b"1"},
    }
    fields.update(changes)
    return PeerRecord(**fields)  # type: ignore[arg-type]


def test_record_handling() -> None:
    assert peer_url(record(), FLEET) == "https://10.0.0.7:8765"
    assert peer_url(record(), OTHER) is None  # another fleet's peer is not even tried
    assert peer_url(record(properties={b"fleet": FLEET.encode()}), FLEET) is None  # no version
    assert peer_url(record(port=None), FLEET) is None
    assert peer_url(record(port=0), FLEET) is None
    assert peer_url(record(addresses=["224.0.0.251", "0.0.0.0"]), FLEET) is None
    assert peer_url(record(addresses=["not an address", "fe80::1"]), FLEET) == (
        "https://[fe80::1]:8765"
    )


def _loopback_multicast_works() -> bool:
    port = free_port()
    try:
        probe = Announcement("127.0.0.1", port, FLEET, interfaces=LOOPBACK)
    except OSError:
        return False
    try:
        return f"https://127.0.0.1:{port}" in discover(FLEET, interfaces=LOOPBACK)
    finally:
        probe.close()


def test_discovery_on_loopback_finds_this_fleets_peers_only() -> None:
    if not _loopback_multicast_works():
        need(False, "multicast on the loopback interface is not possible here")
    ours, theirs = free_port(), free_port()
    first = Announcement("127.0.0.1", ours, FLEET, interfaces=LOOPBACK)
    second = Announcement("127.0.0.1", theirs, OTHER, interfaces=LOOPBACK)
    try:
        found = _browse_until(lambda urls: bool(urls))
    finally:
        first.close()
        second.close()
    assert found == [f"https://127.0.0.1:{ours}"]
    assert _browse_until(lambda urls: not urls) == []  # withdrawn once closed


def _browse_until(done: Callable[[list[str]], bool], timeout_s: float = 20.0) -> list[str]:
    """Browse again until `done` holds: on a loaded machine an announcement or its
    withdrawal can take longer than one browse to reach the other side."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = discover(FLEET, interfaces=LOOPBACK, browse_seconds=2.0)
        if done(found) or time.monotonic() > deadline:
            return found
