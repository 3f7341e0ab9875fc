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
from edge_agent.updates.peer_tls import FleetTls, PeerNotTrusted
from edge_agent.updates.site_peers import site_peers


def fleet_tls(config: AgentConfig) -> FleetTls:
    own = identity_of(config).tls
    assert own.ca_file and own.cert_file and own.key_file  # an Identity names all three
    return FleetTls(own.ca_file, own.cert_file, own.key_file, config.peers.crl_file)


def fleet_name(config: AgentConfig) -> str:
    """The fleet CA's fingerprint: what DNS-SD records carry so fleets do not mix."""
    from cryptography import x509

    from edge_agent.sync.hubtrust import ca_fingerprint

    ca_file = identity_of(config).tls.ca_file
    assert ca_file is not None  # an Identity names it
    try:
        return ca_fingerprint(x509.load_pem_x509_certificate(ca_file.read_bytes()))
    except (OSError, ValueError) as exc:
        raise PeerNotTrusted(
            f"[peers] discover needs this device's fleet CA ({ca_file}: {exc}); enroll first"
        ) from None


def _interfaces(host: str) -> list[str]:
    """Announce and listen where the chunk server listens; every interface for 0.0.0.0."""
    return [] if host in ("0.0.0.0", "") else [host]  # noqa: S104 - compares, binds nothing


def peer_urls(config: AgentConfig) -> list[str]:
    """Whom to ask, in order: `[peers] sources`, the peers the last USB bundle named,
    then (with `[peers] discover`) those announced on the LAN. Duplicates once."""
    settings = config.peers
    urls = [*settings.sources, *site_peers(config.data_dir)]
    if settings.discover:
        from edge_agent.updates.peer_discovery import discover

        own = f"https://{settings.host}:{settings.port}" if settings.serve else ""
        urls += discover(
            fleet_name(config),
            browse_seconds=settings.discover_seconds,
            interfaces=_interfaces(settings.host),
            exclude=[own],
        )
    return list(dict.fromkeys(urls))


def configured_peers(config: AgentConfig) -> list[ChunkSource]:
    """The peers of `peer_urls`, in order; PeerNotTrusted when the device is not enrolled."""
    urls = peer_urls(config)
    if not urls:
        return []
    return peer_sources(
        urls,
        fleet_tls(config),
        timeout_seconds=config.peers.timeout_seconds,
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
    if settings.discover:  # announced on the LAN for as long as it serves
        from edge_agent.updates.peer_discovery import Announcement

        announcement = Announcement(
            settings.host,
            service.server.config.port,
            fleet_name(config),
            interfaces=_interfaces(settings.host),
        )
        service.on_stop.append(announcement.close)
    return service
