"""Trusting the hub before telling it anything.

The operator's enrollment token carries the SHA-256 of the hub CA's public key (the way
kubeadm's `--discovery-token-ca-cert-hash` does): `<secret>@sha256:<hex>`. The device fetches
the CA the hub presents, believes it only when its hash matches, and from then on talks to
the hub only over TLS verified against that one CA (host name checked too). A fake hub on
another address cannot present a certificate from the real CA, so it never sees the CSR.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.protocol.enrollment import HUB_CA_PATH, MAX_PEM_CHARS

FINGERPRINT_PREFIX = "sha256:"
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")
_TICKET = re.compile(r"^(?P<secret>[A-Za-z0-9_-]{16,256})@(?P<fingerprint>sha256:[0-9a-f]{64})$")


class HubNotTrusted(RuntimeError):
    """The hub could not prove it is the one the token names; the message says why."""


def ca_fingerprint(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (kubeadm's CA hash)."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return FINGERPRINT_PREFIX + hashlib.sha256(spki).hexdigest()


@dataclass(frozen=True)
class Ticket:
    """What `edge-hub device enroll` prints: the one-time secret bound to the hub's CA."""

    secret: str
    ca_fingerprint: str

    def __str__(self) -> str:
        return f"{self.secret}@{self.ca_fingerprint}"

    @classmethod
    def parse(cls, text: str) -> Ticket:
        found = _TICKET.match(text.strip())
        if found is None:
            raise ValueError(
                "the enrollment token must look like <secret>@sha256:<64 hex digits>, as "
                "`edge-hub device enroll` prints it; copy it whole"
            )
        return cls(found["secret"], found["fingerprint"])


def fetch_pinned_ca(hub_url: str, fingerprint: str, *, timeout_s: float) -> x509.Certificate:
    """The hub's CA, fetched over TLS that is not yet verified, and believed only because
    its public key hashes to `fingerprint`. HubNotTrusted otherwise."""
    if not _FINGERPRINT.match(fingerprint):
        raise HubNotTrusted(f"{fingerprint!r} is not a sha256:<hex> CA fingerprint")
    url = hub_url.rstrip("/") + HUB_CA_PATH
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # nothing is believed until the hash matches
    try:
        reply = httpx.get(url, verify=unverified, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise HubNotTrusted(
            _not_a_hub(hub_url, timeout_s)
            or f"cannot reach the hub at {url}: {exc}; check the address and that "
            "`edge-hub serve` runs there with TLS"
        ) from None
    if reply.status_code != 200 or len(reply.content) > MAX_PEM_CHARS:
        raise HubNotTrusted(
            f"{url} answered HTTP {reply.status_code}, not the hub's CA: is {hub_url} the "
            "address `edge-hub serve` printed (https://HOST:8070 by default)?"
        )
    try:
        ca = x509.load_pem_x509_certificate(reply.content)
    except ValueError:
        raise HubNotTrusted(f"{url} did not answer with a PEM certificate") from None
    found = ca_fingerprint(ca)
    if not hmac.compare_digest(found, fingerprint):
        raise HubNotTrusted(
            f"the server at {hub_url} presents CA {found}, but the token names {fingerprint}: "
            "this is not the hub that made the token (or the token is mistyped); nothing "
            "was sent to it"
        )
    if not _is_ca(ca):
        raise HubNotTrusted(f"the certificate at {url} is not a CA certificate")
    return ca


def _not_a_hub(hub_url: str, timeout_s: float) -> str | None:
    """Why TLS failed, when the address is a plain HTTP server (an edge-agent's API, most
    often: its port is the one an operator has at hand). Asks only for the agent's
    public health check; None when nothing plain answers there."""
    plain = "http://" + hub_url.removeprefix("https://").rstrip("/")
    try:
        health = httpx.get(plain + "/healthz", timeout=timeout_s)
    except httpx.HTTPError:
        return None
    hint = "use the hub's address that `edge-hub serve` printed (https://HOST:8070 by default)"
    try:
        agent = health.json() == {"status": "ok"}
    except ValueError:
        agent = False
    if agent:
        return f"{hub_url} is an edge-agent's API (plain HTTP), not the hub: {hint}"
    return f"{hub_url} answers plain HTTP, not the hub's TLS: {hint}"


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def verifying_context(ca_pem: str) -> ssl.SSLContext:
    """TLS that trusts this CA alone (no system roots) and checks the host name."""
    return ssl.create_default_context(cadata=ca_pem)


def ca_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()
