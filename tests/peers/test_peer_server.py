"""The chunk server a device runs for its peers, attacked over real TLS on loopback: who may
connect (devices of the fleet only, not revoked ones) and what may be asked (a chunk by
its hash, nothing else)."""

from __future__ import annotations

import hashlib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.updates.peer_server import create_app
from edge_agent.updates.peer_tls import FleetTls, client_context
from tests.peers.conftest import MODEL, Device, PeerThread, Site


def raw_get(url_port: int, target: str, tls: FleetTls | None, headers: str = "") -> bytes:
    """Send `GET target` byte for byte (no client library normalises the path) and return
    everything the server answered. `tls` None: a TLS client with no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls is not None:
        context = client_context(tls)
    with (
        socket.create_connection(("127.0.0.1", url_port), timeout=10) as plain,
        context.wrap_socket(plain) as conn,
    ):
        request = f"GET {target} HTTP/1.1\r\nHost: peer\r\nConnection: close\r\n{headers}\r\n"
        conn.sendall(request.encode("latin-1"))
        answer = b""
        while block := conn.recv(65536):
            answer += block
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def holder(site: Site) -> Iterator[tuple[Device, PeerThread]]:
    """A device that imported the release and serves its chunks."""
    device = site.device("dev-a")
    device.import_stick(site.stick)
    with device.serve_chunks() as peer:
        yield device, peer


def a_chunk(site: Site) -> tuple[str, bytes]:
    sha, _size = sorted(site.chunks().items())[0]
    data = (site.stick / "chunks" / sha[:2] / sha).read_bytes()
    return sha, data


def test_a_fleet_device_gets_a_chunk_and_a_range_of_it(
    site: Site, holder: tuple[Device, PeerThread]
) -> None:
    _device, peer = holder
    client = site.device("dev-b").tls
    sha, data = a_chunk(site)
    whole = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", client)
    assert status_of(whole) == 200 and whole.endswith(b"\r\n\r\n" + data)
    part = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", client, "Range: bytes=10-19\r\n")
    assert status_of(part) == 206
    assert part.endswith(b"\r\n\r\n" + data[10:20])
    assert f"content-range: bytes 10-19/{len(data)}".encode() in part.lower()
    tail = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", client, "Range: bytes=-7\r\n")
    assert status_of(tail) == 206 and tail.endswith(b"\r\n\r\n" + data[-7:])
    beyond = raw_get(
        peer.port, f"/chunks/{sha[:2]}/{sha}", client, f"Range: bytes={len(data)}-\r\n"
    )
    assert status_of(beyond) == 416


def refused_handshake(port: int, tls: FleetTls | None) -> str:
    """The TLS error the client sees; the server must refuse before any HTTP answer."""
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as caught:
        answer = raw_get(port, "/chunks/00/" + "0" * 64, tls)
        if not answer:  # the server closed the connection: refused
            raise ConnectionResetError("closed without an answer")
    return str(caught.value)


def test_a_client_without_a_certificate_is_refused(holder: tuple[Device, PeerThread]) -> None:
    _device, peer = holder
    refused_handshake(peer.port, None)
    assert peer.recorder.seen == []  # no request reached the application


def test_a_client_of_another_fleet_is_refused(
    holder: tuple[Device, PeerThread], stranger: FleetTls
) -> None:
    device, peer = holder
    # It even trusts our CA: what matters is who issued its own certificate.
    refused_handshake(peer.port, FleetTls(device.tls.ca, stranger.cert, stranger.key))
    assert peer.recorder.seen == []


def test_a_revoked_device_is_refused_where_the_crl_is_present(site: Site) -> None:
    holder, honest, revoked = site.device("dev-a"), site.device("dev-b"), site.device("dev-r")
    holder.import_stick(site.stick)
    site.hub.ca.revoke("dev-r")
    crl = holder.folder / "identity" / "crl.pem"
    crl.write_bytes(site.hub.ca.crl_path.read_bytes())  # the operator copied it over
    tls = FleetTls(holder.tls.ca, holder.tls.cert, holder.tls.key, crl)
    sha, data = a_chunk(site)
    with PeerThread(create_app(holder.store), tls) as peer:
        refused_handshake(peer.port, revoked.tls)
        assert peer.recorder.seen == []
        answer = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", honest.tls)
    assert status_of(answer) == 200 and answer.endswith(data)


SECRETS = ("identity/device.key", "floors.json", "update-state.json")


@pytest.mark.parametrize(
    "target",
    [
        "/../identity/device.key",
        "/chunks/../identity/device.key",
        "/chunks/%2e%2e/%2e%2e/identity/device.key",
        "/chunks/..%2f..%2fidentity/device.key",
        "/chunks/de/device.key",
        "/identity/device.key",
        "/models/tiny/active/genai_config.json",
        "/floors.json",
        "/chunks/",
        "/chunks/ab",
        "/chunks/ab/" + "A" * 64,
        "/chunks/ab/" + "g" * 64,
        "/chunks/ab/" + "a" * 63,
    ],
)
def test_only_a_chunk_by_its_hash_is_served(
    site: Site, holder: tuple[Device, PeerThread], target: str
) -> None:
    device, peer = holder
    answer = raw_get(peer.port, target, site.device("dev-b").tls)
    assert status_of(answer) in (400, 404)
    for name in (*SECRETS, f"models/{MODEL}/active/genai_config.json"):
        path = device.folder / name
        if path.is_file():
            assert path.read_bytes()[:64] not in answer


def test_the_prefix_must_be_the_hash_s_own(site: Site, holder: tuple[Device, PeerThread]) -> None:
    _device, peer = holder
    sha, data = a_chunk(site)
    wrong = "00" if sha[:2] != "00" else "ff"
    answer = raw_get(peer.port, f"/chunks/{wrong}/{sha}", site.device("dev-b").tls)
    assert status_of(answer) == 400 and data[:64] not in answer


def test_a_chunk_damaged_on_the_holder_s_disk_is_not_passed_on(
    site: Site, holder: tuple[Device, PeerThread]
) -> None:
    device, peer = holder
    active = device.store.active(MODEL)
    assert active is not None
    entry = max(active.manifest.files, key=lambda e: e.size)
    first = entry.chunks[0]
    path: Path = active.path / entry.path
    path.chmod(0o644)  # installed files are read-only; bit rot does not ask
    damaged = bytearray(path.read_bytes())
    damaged[0] ^= 1
    path.write_bytes(bytes(damaged))
    answer = raw_get(
        peer.port, f"/chunks/{first.sha256[:2]}/{first.sha256}", site.device("dev-b").tls
    )
    assert status_of(answer) == 404
    assert hashlib.sha256(bytes(damaged[: first.size])).hexdigest() != first.sha256


def test_connections_beyond_the_bound_get_503(site: Site) -> None:
    """One connection held open (idle, after its handshake) fills a server bounded at one:
    the next device is told to come back (503) instead of queueing without end."""
    holder, client = site.device("dev-a"), site.device("dev-b")
    holder.import_stick(site.stick)
    sha, data = a_chunk(site)
    with PeerThread(create_app(holder.store), holder.tls, max_connections=1) as peer:
        context = client_context(client.tls)
        with (
            socket.create_connection(("127.0.0.1", peer.port), timeout=10) as plain,
            context.wrap_socket(plain) as held,
        ):
            held.sendall(b"GET /chunks/00/" + b"0" * 64 + b" HTTP/1.1\r\nHost: peer\r\n\r\n")
            assert held.recv(65536).startswith(b"HTTP/1.1 404")  # served; kept alive
            answer = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", client.tls)
        assert status_of(answer) == 503 and data[:64] not in answer
        after = raw_get(peer.port, f"/chunks/{sha[:2]}/{sha}", client.tls)
    assert status_of(after) == 200 and after.endswith(data)
