"""Finding a site's chunk peers by mDNS/DNS-SD (`[peers] discover = true`, off by default).

Why `zeroconf` (python-zeroconf): it is the maintained, pure-Python mDNS/DNS-SD
implementation (Home Assistant's), with no system daemon needed (Avahi is not on every
edge box, nor on Windows), and it can be confined to chosen interfaces. What it finds is
only a hint: a peer is reached over mutual TLS with the fleet's device certificates and
every chunk is checked against the signed manifest (edge_agent.updates.chunks), so a
forged record costs a failed connection, never a bad byte.

A serving agent announces `SERVICE_TYPE` with its address and port and the TXT key
`fleet`: its fleet CA's fingerprint (a public value), so devices of another fleet on the
same LAN are not even tried. Discovery listens for `browse_seconds` and keeps records of
this fleet, in a stable order.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # zeroconf is loaded only when discovery is switched on
    from zeroconf import Zeroconf

SERVICE_TYPE = "_edge-chunks._tcp.local."
FLEET_KEY = b"fleet"
VERSION_KEY = b"v"
RECORD_VERSION = b"1"
MAX_PEERS = 64


@dataclass(frozen=True)
class PeerRecord:
    """What one DNS-SD answer says, before it is believed as a peer address."""

    name: str
    addresses: Sequence[str]
    port: int | None
    properties: Mapping[bytes, bytes | None]


def peer_url(record: PeerRecord, fleet: str) -> str | None:
    """`https://address:port` for a record of this fleet; None for another fleet's, an
    unknown record version, or one without a usable address or port."""
    if record.properties.get(FLEET_KEY) != fleet.encode():
        return None
    if record.properties.get(VERSION_KEY) != RECORD_VERSION:
        return None
    if record.port is None or not 0 < record.port < 65536:
        return None
    for text in record.addresses:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            continue
        if address.is_multicast or address.is_unspecified:
            continue
        host = f"[{address}]" if address.version == 6 else str(address)
        return f"https://{host}:{record.port}"
    return None


def _zeroconf(interfaces: Sequence[str]) -> Zeroconf:
    try:
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf
    except ImportError:
        raise RuntimeError(
            "[peers] discover needs the zeroconf package, which this installation lacks: "
            "reinstall the agent, or set [peers] discover = false and list [peers] sources"
        ) from None
    chosen = list(interfaces) if interfaces else InterfaceChoice.All
    return Zeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)


def _announced(host: str) -> list[str]:
    """The addresses to announce: `host`, or for 0.0.0.0 every IPv4 address of this
    machine but loopback (ifaddr comes with zeroconf)."""
    if host != "0.0.0.0":  # noqa: S104 - compares, binds nothing
        return [host]
    import ifaddr

    return [
        str(ip.ip)
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    ]


class Announcement:
    """This agent's chunk server, announced on the LAN until closed."""

    def __init__(self, host: str, port: int, fleet: str, *, interfaces: Sequence[str] = ()) -> None:
        from zeroconf import ServiceInfo

        self._zeroconf = _zeroconf(interfaces)
        name = f"{socket.gethostname()}-{port}".replace(".", "-")[:60]
        self.info = ServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in _announced(host)],
            port=port,
            properties={FLEET_KEY: fleet.encode(), VERSION_KEY: RECORD_VERSION},
        )
        self._zeroconf.register_service(self.info)

    def close(self) -> None:
        self._zeroconf.unregister_service(self.info)
        self._zeroconf.close()


def discover(
    fleet: str,
    *,
    browse_seconds: float = 2.0,
    interfaces: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """Peer URLs of this fleet announced on the LAN within `browse_seconds`, sorted;
    `exclude`: this agent's own URL."""
    from zeroconf import ServiceBrowser, ServiceStateChange

    zeroconf = _zeroconf(interfaces)
    names: list[str] = []
    lock = threading.Lock()

    def seen(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Added:
            with lock:
                names.append(name)

    browser = ServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[seen])
    try:
        time.sleep(browse_seconds)
        found: set[str] = set()
        with lock:
            pending = list(names)[:MAX_PEERS]
        for name in pending:
            info = zeroconf.get_service_info(SERVICE_TYPE, name, timeout=1000)
            if info is None:
                continue
            record = PeerRecord(name, info.parsed_addresses(), info.port, info.properties)
            url = peer_url(record, fleet)
            if url is not None and url not in exclude:
                found.add(url)
        return sorted(found)
    finally:
        browser.cancel()
        zeroconf.close()
