"""Mutual TLS between devices of one fleet, for sharing chunks over a site's LAN.

Both ends present the certificate the hub's device CA issued at enrollment and accept only
a certificate from that CA (and, where the operator copied the hub's CRL to the device, not
a revoked one). A peer is still never trusted with content: every chunk is checked against
the signed manifest. TLS keeps strangers on the LAN from reading or serving chunks.

Device certificates carry the clientAuth purpose only (the hub issues them for the broker),
and OpenSSL refuses such a certificate from a server ("unsuitable certificate purpose").
So the client side completes the handshake without OpenSSL's chain check and then
validates the server's certificate with cryptography's X.509 path validation (signature,
validity, CA constraints, the clientAuth purpose), before it reads a byte of the answer.
The handshake itself still proves that the server holds the certificate's key.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)


class PeerNotTrusted(Exception):
    """A peer's certificate is not one the fleet's CA issued, or it is revoked."""


@dataclass(frozen=True)
class FleetTls:
    """This device's TLS identity (edge_agent.sync.identity) and the fleet's CA."""

    ca: Path
    cert: Path
    key: Path
    crl: Path | None = None  # the hub's CRL (ca/crl.pem) where the operator copied it here

    def check(self) -> None:
        """OSError-free startup: say which file is missing and what to do."""
        for what, path in (("CA", self.ca), ("certificate", self.cert), ("key", self.key)):
            if not path.is_file():
                raise PeerNotTrusted(
                    f"the device {what} {path} is missing: enroll the device with its hub "
                    "(edge-agent enroll) before sharing chunks with peers"
                )
        if self.crl is not None and not self.crl.is_file():
            raise PeerNotTrusted(
                f"[peers] crl_file {self.crl} does not exist: copy the hub's crl.pem there "
                "or remove the setting"
            )


def server_context(tls: FleetTls) -> ssl.SSLContext:
    """TLS 1.3 only, a client certificate from the fleet CA required (OpenSSL checks it
    during the handshake, the CRL too when there is one)."""
    tls.check()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(cafile=tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    if tls.crl is not None:
        context.load_verify_locations(cafile=tls.crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_context(tls: FleetTls) -> ssl.SSLContext:
    """Presents this device's certificate; the server's is checked by `PeerVerifier`
    (see the module's docstring for why not by OpenSSL)."""
    tls.check()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are found by address; the fleet CA is the check
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(tls.cert, tls.key)
    return context


class PeerVerifier:
    """Validates a peer's leaf certificate (DER) against the fleet CA and its CRL."""

    def __init__(self, tls: FleetTls) -> None:
        self._ca = x509.load_pem_x509_certificate(tls.ca.read_bytes())
        self._crl = x509.load_pem_x509_crl(tls.crl.read_bytes()) if tls.crl else None
        ca_key = self._ca.public_key()
        if not isinstance(ca_key, ec.EllipticCurvePublicKey):
            raise PeerNotTrusted(f"{tls.ca} is not the fleet's device CA (an ECDSA key)")
        if self._crl is not None and not self._crl.is_signature_valid(ca_key):
            raise PeerNotTrusted(f"{tls.crl} is not signed by the fleet CA {tls.ca}")
        self._accepted: set[bytes] = set()

    def verify(self, der: bytes | None, peer: str) -> None:
        if der is None:
            raise PeerNotTrusted(f"{peer} presented no certificate")
        if der in self._accepted:
            return
        try:
            leaf = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise PeerNotTrusted(f"{peer} presented an unreadable certificate: {exc}") from exc
        # Device certificates have no subjectAltName (the broker reads the CN): allowed.
        leaf_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
        )
        verifier = (
            PolicyBuilder()
            .store(Store([self._ca]))
            .time(dt.datetime.now(dt.UTC))
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=leaf_policy
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, [])
        except VerificationError as exc:
            raise PeerNotTrusted(
                f"{peer} is not a device of this fleet (its certificate: {exc})"
            ) from exc
        if self._crl is not None:
            revoked = self._crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
            if revoked is not None:
                raise PeerNotTrusted(f"{peer}'s certificate is revoked by the fleet's CRL")
        self._accepted.add(der)
