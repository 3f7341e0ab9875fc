"""The hub's HTTPS identity: a server certificate from the hub's own CA for the HTTP API
(enrollment, releases). Devices pin that CA by the fingerprint in their enrollment token
and trust nothing else for the hub.

The certificate is made on the first `edge-hub serve` and made again, from the same CA,
when it is within RENEW_BEFORE of expiry, names other hosts than configured, is not from
the current CA, or on `edge-hub keys rotate https`. Devices need nothing new: they trust
the CA, not the certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from edge_agent.atomic import write_atomic
from edge_agent.sync.hubtrust import ca_fingerprint
from hub.fleet.identity import DEFAULT_SERVER_HOSTS, DeviceCA, TlsFiles

HTTPS_CERT = "https.crt"
HTTPS_KEY = "https.key"
RENEW_BEFORE = dt.timedelta(days=30)

__all__ = ["HTTPS_CERT", "HTTPS_KEY", "fingerprint", "https_files", "is_loopback", "tls_hosts"]


def tls_hosts(bind_host: str, names: Sequence[str] = ()) -> list[str]:
    """The names the certificate must hold: the configured names, the bound address when
    it is a real one, and loopback."""
    own = [] if not bind_host or _is_unspecified(bind_host) else [bind_host]
    return list(dict.fromkeys([*names, *own, *DEFAULT_SERVER_HOSTS]))


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(ca: DeviceCA) -> str:
    """What an enrollment token carries: sha256 of the hub CA's public key."""
    return ca_fingerprint(ca.certificate)


def https_files(
    ca: DeviceCA, hosts: Sequence[str], *, rotate: bool = False, now: dt.datetime | None = None
) -> tuple[TlsFiles, bool]:
    """The HTTPS certificate and key for `hosts`, and whether they were made just now."""
    files = TlsFiles(ca.ca_cert_path, ca.folder / HTTPS_CERT, ca.folder / HTTPS_KEY)
    stale = rotate or _stale(files.cert, ca, hosts, now or dt.datetime.now(dt.UTC))
    if stale:
        key_pem, cert_pem = ca.server_certificate(hosts)
        # The key first: a crash in between leaves no certificate without its key.
        write_atomic(files.key, key_pem, mode=0o600)
        write_atomic(files.cert, cert_pem, mode=0o644)
    return files, stale


def _stale(path: Path, ca: DeviceCA, hosts: Sequence[str], now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert.verify_directly_issued_by(ca.certificate)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return True
    named = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    named |= set(sans.get_values_for_type(x509.DNSName))
    expiring = cert.not_valid_after_utc - now < RENEW_BEFORE
    return expiring or not set(hosts) <= named
