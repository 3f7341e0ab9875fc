"""One stick for a whole site: one device imports, the others fetch every chunk from it
over the LAN (loopback here), verified against the signed manifest; a peer that lies is
passed over and the update goes on with the next source."""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge_agent.updates.peer_server import ChunkIndex, create_app
from edge_agent.updates.peer_tls import FleetTls
from tests.peers.conftest import MODEL, Device, PeerThread, Site


def installed(device: Device) -> str | None:
    active = device.store.active(MODEL)
    return active.version if active else None


def assert_as_signed(device: Device) -> None:
    """Every installed file has the bytes the signed manifest names; no chunk left over."""
    active = device.store.active(MODEL)
    assert active is not None
    for entry in active.manifest.files:
        digest = hashlib.sha256((active.path / entry.path).read_bytes()).hexdigest()
        assert digest == entry.sha256, entry.path
    assert [p for p in device.store.chunks_dir.rglob("*") if p.is_file()] == []


def tampering_peer(honest: Device) -> Any:
    """A compromised device of the fleet: a valid certificate, but every chunk it serves
    has its last byte flipped."""
    index = ChunkIndex(honest.store)

    async def chunk(request: Request) -> Response:
        data = index.read(request.path_params["sha256"])
        if data is None:
            return Response(status_code=404)
        return Response(data[:-1] + bytes([data[-1] ^ 1]))

    return Starlette(routes=[Route("/chunks/{prefix}/{sha256}", chunk)])


def test_two_devices_fetch_every_chunk_from_the_one_that_imported(site: Site) -> None:
    a, b, c = site.device("dev-a"), site.device("dev-b"), site.device("dev-c")
    assert a.import_stick(site.stick).version == "1.0.0"
    chunks = site.chunks()
    assert len(chunks) >= 2  # more than one chunk, or the test proves little

    with a.serve_chunks() as peer:
        outcome_b, chain_b = b.update([peer.url])
        outcome_c, chain_c = c.update([peer.url])

    assert (outcome_b.version, outcome_c.version) == ("1.0.0", "1.0.0")
    assert installed(b) == installed(c) == "1.0.0"
    # Counted where the bytes left: A's server answered each chunk once per device; the
    # hub served metadata only.
    assert sorted(peer.chunk_gets) == sorted(2 * [f"/chunks/{s[:2]}/{s}" for s in chunks])
    assert site.hub_chunk_gets == []
    assert chain_b.delivered == {f"peer {peer.url}": len(chunks)}
    assert chain_c.passed_over == {}
    # The installed files are the release's, byte for byte.
    for entry in site.hub.repo.manifest(MODEL, "1.0.0").files:
        a_file = a.store.active(MODEL).path / entry.path  # type: ignore[union-attr]
        for device in (b, c):
            assert (device.store.active(MODEL).path / entry.path).read_bytes() == (  # type: ignore[union-attr]
                a_file.read_bytes()
            )


def test_a_peer_serving_a_tampered_chunk_is_refused_and_the_next_peer_serves(
    site: Site,
) -> None:
    a, b, m = site.device("dev-a"), site.device("dev-b"), site.device("dev-m")
    a.import_stick(site.stick)
    chunks = site.chunks()

    with PeerThread(tampering_peer(a), m.tls) as liar, a.serve_chunks() as honest:
        outcome, chain = b.update([liar.url, honest.url])

    assert outcome.version == installed(b) == "1.0.0"
    # The liar was asked once, refused, and never asked again; the honest peer served all.
    assert len(liar.chunk_gets) == 1
    assert len(honest.chunk_gets) == len(chunks)
    assert site.hub_chunk_gets == []
    assert "signed manifest refutes" in chain.passed_over[f"peer {liar.url}"]
    assert_as_signed(b)


def test_with_only_a_lying_peer_the_hub_serves_and_the_install_is_correct(site: Site) -> None:
    a, b, m = site.device("dev-a"), site.device("dev-b"), site.device("dev-m")
    a.import_stick(site.stick)
    chunks = site.chunks()

    with PeerThread(tampering_peer(a), m.tls) as liar:
        outcome, chain = b.update([liar.url])

    assert outcome.version == installed(b) == "1.0.0"
    assert len(liar.chunk_gets) == 1
    assert len(site.hub_chunk_gets) == len(chunks)
    assert chain.delivered == {"the release repository": len(chunks)}
    assert_as_signed(b)


def test_a_peer_outside_the_fleet_is_not_asked_and_the_hub_serves(
    site: Site, stranger: FleetTls
) -> None:
    """A chunk server whose certificate another CA issued: the device refuses it after the
    handshake, before reading its answer, and fetches from the hub. The impostor accepts the
    fleet's clients (the fleet CA's certificate is public), so only the device's own check
    of the server stands between it and the impostor."""
    a, b = site.device("dev-a"), site.device("dev-b")
    a.import_stick(site.stick)
    impostor_tls = FleetTls(b.tls.ca, stranger.cert, stranger.key)

    with PeerThread(create_app(a.store), impostor_tls) as impostor:  # even honest bytes
        outcome, chain = b.update([impostor.url])

    assert outcome.version == installed(b) == "1.0.0"
    assert "not a device of this fleet" in chain.passed_over[f"peer {impostor.url}"]
    assert len(site.hub_chunk_gets) == len(site.chunks())


def test_an_unreachable_peer_is_passed_over(site: Site) -> None:
    b = site.device("dev-b")
    with PeerThread(tampering_peer(b), b.tls) as gone:
        url = gone.url
    outcome, chain = b.update([url])
    assert outcome.version == "1.0.0"
    assert f"peer {url}" in chain.passed_over
    assert len(site.hub_chunk_gets) == len(site.chunks())
