"""The `[peers]` settings turned into parts: the peers an update asks for chunks, and the
chunk server `edge-agent serve` runs for the site. Both use the device's enrollment
identity (edge_agent.sync.identity): without one, a device can neither prove it belongs
to the fleet nor check that a peer does."""

from __future__ import annotations

from edge_agent.config import AgentConfig
from edge_agent.store import ModelStore
from edge_agent.sync.settings import identity_of
from edge_agent.updates.chunks import ChunkSource, peer_sources
from edge_agent.updates.peer_server import PeerService
from edge_agent.updates.peer_tls import FleetTls


def fleet_tls(config: AgentConfig) -> FleetTls:
    own = identity_of(config).tls
    assert own.ca_file and own.cert_file and own.key_file  # an Identity names all three
    return FleetTls(own.ca_file, own.cert_file, own.key_file, config.peers.crl_file)


def configured_peers(config: AgentConfig) -> list[ChunkSource]:
    """The `[peers] sources`, in order; PeerNotTrusted when the device is not enrolled."""
    settings = config.peers
    if not settings.sources:
        return []
    return peer_sources(
        settings.sources,
        fleet_tls(config),
        timeout_seconds=settings.timeout_seconds,
    )


def start_peer_service(config: AgentConfig) -> PeerService | None:
    """The chunk server when `[peers] serve = true`, listening; None otherwise.
    PeerNotTrusted (not enrolled) or OSError (address taken) say what to fix."""
    settings = config.peers
    if not settings.serve:
        return None
    service = PeerService(
        ModelStore(config.data_dir),
        fleet_tls(config),
        host=settings.host,
        port=settings.port,
        max_connections=settings.max_connections,
        max_parallel_reads=settings.max_parallel_reads,
    )
    service.start()
    return service
