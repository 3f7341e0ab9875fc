"""Device identity: the hub's device CA, device certificates, revocation and enrollment.

A device makes its own key pair and sends a certificate signing request (CSR) whose common
name is its device id; the hub never sees the private key. The broker (Mosquitto with
`use_identity_as_username true`) takes the certificate's CN as the MQTT username, so the
ACL `%u` patterns fence each device into its own topics. Revoking a device puts every
certificate ever issued to it on the CRL, which the broker reads as its `crlfile`.

Keys are ECDSA P-256: OpenSSL, and so Mosquitto 2.0, accepts it everywhere for TLS.

Layout of the CA folder (keys 0600, the folder 0700):

    ca.key  ca.crt  crl.pem      the CA and its revocation list
    server.key  server.crt       the broker's TLS certificate (SAN 127.0.0.1, localhost)
    https.key  https.crt         the hub's HTTPS certificate (hub.fleet.https)
    issued.json                  serial -> device id, issue time, revoked time
    tokens.json                  enrollment tokens: sha256 -> device id, expiry
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hmac
import ipaddress
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.atomic import make_dirs, write_atomic
from edge_agent.mqtt import TlsFiles as ClientTls
from edge_agent.protocol.errors import shown
from edge_agent.protocol.topics import HUB_USERNAME, is_valid_name
from edge_agent.sync.identity import key_pem, make_csr, new_key
from hub.artifacts.tokens import token_hash

CA_NAME = "edge-hub device CA"
CA_VALID_DAYS = 20 * 365
DEVICE_VALID_DAYS = 5 * 365
SERVER_VALID_DAYS = 5 * 365
# OpenSSL refuses every certificate once the CRL's nextUpdate has passed, so the CRL is
# long-lived; it is rewritten on every revocation (and on every start of the CA).
CRL_VALID_DAYS = 10 * 365
TOKEN_TTL = dt.timedelta(hours=24)
DEFAULT_SERVER_HOSTS = ("127.0.0.1", "localhost")
MAX_CSR_BYTES = 16 << 10
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644

__all__ = [
    "CA_NAME",
    "CsrRejected",
    "DeviceCA",
    "EnrollmentRefused",
    "EnrollmentTokens",
    "IdentityError",
    "TlsFiles",
    "build_crl",
    "enroll",
    "issue_device_certificate",
    "key_pem",
    "make_ca",
    "make_csr",
    "make_server_certificate",
    "new_key",
]


class IdentityError(Exception):
    """A certificate, CSR or token the hub must refuse; the message says what and why."""


class CsrRejected(IdentityError):
    pass


class EnrollmentRefused(IdentityError):
    pass


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS endpoint needs: the CA to trust, its own certificate and key."""

    ca: Path
    cert: Path
    key: Path

    def client(self) -> ClientTls:
        return ClientTls(self.ca, self.cert, self.key)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def x509_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def ca_key_usage() -> x509.KeyUsage:
    """A CA's key usage: it signs certificates and CRLs, nothing else."""
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    valid_days: int,
    path_length: int,
    now: dt.datetime,
) -> x509.Certificate:
    """A self-signed CA certificate for key (the hub's CA and the offline device root)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509_name(common_name))
        .issuer_name(x509_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def make_ca(
    common_name: str = CA_NAME, *, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed CA that may sign certificates and CRLs, nothing else."""
    now = now or _now()
    key = new_key()
    return key, self_signed_ca(key, common_name, valid_days=CA_VALID_DAYS, path_length=0, now=now)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    public_key: Any,
    *,
    usage: x509.ObjectIdentifier,
    valid_days: int,
    sans: Sequence[x509.GeneralName] = (),
    now: dt.datetime | None = None,
) -> x509.Certificate:
    now = now or _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _common_name(name: x509.Name) -> str | None:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or len(name.rdns) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else None


def issue_device_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    csr_pem: bytes,
    device_id: str,
    *,
    valid_days: int = DEVICE_VALID_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A TLS client certificate for `device_id` over the key in `csr_pem`, after checking
    that the CSR is signed by that key and names exactly that device. CsrRejected if not."""
    if not is_valid_name(device_id):
        raise CsrRejected(f"device id {shown(device_id)} is not a valid device id")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise CsrRejected(f"the CSR is {len(csr_pem)} bytes, over {MAX_CSR_BYTES}")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrRejected(f"not a PEM certificate signing request: {exc}") from None
    if not csr.is_signature_valid:
        raise CsrRejected("the CSR's signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise CsrRejected("the CSR's key must be ECDSA P-256")
    cn = _common_name(csr.subject)
    if cn is None:
        raise CsrRejected(
            f"the CSR's subject must be exactly one CN, not {csr.subject.rfc4514_string()}"
        )
    if cn != device_id:
        raise CsrRejected(f"the CSR names {shown(cn)}, not the device {shown(device_id)}")
    return _leaf(
        ca_key,
        ca_cert,
        device_id,
        public_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        valid_days=valid_days,
        now=now,
    )


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = DEFAULT_SERVER_HOSTS,
    *,
    now: dt.datetime | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key and TLS server certificate for the broker, valid for `hosts` (IPs or names)."""
    if not hosts:
        raise ValueError("a server certificate needs at least one host name or address")
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = new_key()
    cert = _leaf(
        ca_key,
        ca_cert,
        hosts[0],
        key.public_key(),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        valid_days=SERVER_VALID_DAYS,
        sans=sans,
        now=now,
    )
    return key, cert


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    revoked: Sequence[tuple[int, dt.datetime]],
    *,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL listing `revoked` (serial, revocation time); empty is valid and needed: with a
    `crlfile`, OpenSSL refuses every client whose issuer has no CRL."""
    now = now or _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_VALID_DAYS))
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def _pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """One writer at a time, across processes (several hub workers share the folder)."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path} is unreadable or not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise IdentityError(f"{path} must hold a JSON object")
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode(), mode=_KEY_MODE)


@dataclass(frozen=True)
class IssuedCertificate:
    serial: int
    issued_at: dt.datetime
    expires: dt.datetime | None  # None: issued before expiry was recorded
    revoked_at: dt.datetime | None


def _entry(cert: x509.Certificate, name: str, at: dt.datetime) -> dict[str, Any]:
    return {
        "name": name,
        "issued_at": at.isoformat(),
        "expires": cert.not_valid_after_utc.isoformat(),
        "revoked_at": None,
    }


class DeviceCA:
    """The device CA in a folder: created on first use, then loaded."""

    def __init__(self, folder: Path, *, server_hosts: Sequence[str] = DEFAULT_SERVER_HOSTS) -> None:
        self.folder = folder
        make_dirs(folder)
        folder.chmod(0o700)
        with _locked(folder / ".ca.lock"):
            if not self.ca_key_path.exists():
                key, cert = make_ca()
                # The key first: a crash in between leaves no certificate without its key.
                write_atomic(self.ca_key_path, key_pem(key), mode=_KEY_MODE)
                write_atomic(self.ca_cert_path, _pem(cert), mode=_PUBLIC_MODE)
            self._key, self._cert = self._load()
            if not self.server_cert_path.exists():
                server_key, server_cert = make_server_certificate(
                    self._key, self._cert, server_hosts
                )
                write_atomic(self.server_key_path, key_pem(server_key), mode=_KEY_MODE)
                write_atomic(self.server_cert_path, _pem(server_cert), mode=_PUBLIC_MODE)
            self._write_crl()

    @property
    def ca_key_path(self) -> Path:
        return self.folder / "ca.key"

    @property
    def ca_cert_path(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def crl_path(self) -> Path:
        return self.folder / "crl.pem"

    @property
    def server_key_path(self) -> Path:
        return self.folder / "server.key"

    @property
    def server_cert_path(self) -> Path:
        return self.folder / "server.crt"

    @property
    def issued_path(self) -> Path:
        return self.folder / "issued.json"

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.ca_cert_path.exists() and (self.folder / "ca.csr").exists():
            raise IdentityError(
                f"the hub's device CA in {self.folder} waits for the key ceremony's signature: "
                "`edge-provision device-ca sign` offline, then `device-ca install` here"
            )
        try:
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise IdentityError(f"the device CA in {self.folder} cannot be loaded: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise IdentityError(f"{self.ca_key_path} is not the key of {self.ca_cert_path}")
        return key, cert

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def server_files(self) -> TlsFiles:
        return TlsFiles(self.ca_cert_path, self.server_cert_path, self.server_key_path)

    def server_certificate(self, hosts: Sequence[str]) -> tuple[bytes, bytes]:
        """A new TLS server key and certificate (PEM) for `hosts`, from this CA."""
        key, cert = make_server_certificate(self._key, self._cert, hosts)
        return key_pem(key), _pem(cert)

    def _issued(self) -> dict[str, Any]:
        return _read_json(self.issued_path)

    def _record(self, cert: x509.Certificate, name: str) -> None:
        issued = self._issued()
        issued[str(cert.serial_number)] = _entry(cert, name, _now())
        _write_json(self.issued_path, issued)

    def issue_device_certificate(self, csr_pem: bytes, device_id: str) -> bytes:
        """The PEM client certificate for `device_id`'s CSR; CsrRejected for a bad CSR."""
        cert = issue_device_certificate(self._key, self._cert, csr_pem, device_id)
        with _locked(self.folder / ".ca.lock"):
            self._record(cert, device_id)
        return _pem(cert)

    def issue_device_certificates(self, requests: Sequence[tuple[bytes, str]]) -> list[bytes]:
        """PEM certificates for many (CSR, device id) pairs, recorded in one write: the
        record file is rewritten once, not once per device (a simulated fleet of 10,000).
        All or none: CsrRejected for the first bad CSR, and nothing is recorded."""
        certs = [issue_device_certificate(self._key, self._cert, csr, d) for csr, d in requests]
        with _locked(self.folder / ".ca.lock"):
            issued = self._issued()
            at = _now()
            for cert, (_csr, device_id) in zip(certs, requests, strict=True):
                issued[str(cert.serial_number)] = _entry(cert, device_id, at)
            _write_json(self.issued_path, issued)
        return [_pem(cert) for cert in certs]

    def hub_client_files(self, name: str = HUB_USERNAME) -> TlsFiles:
        """The hub's own client identity (CN `name`, made here on first use): a hub name
        starts with "_", which no device id and so no device CSR can."""
        if not name.startswith("_") or not is_valid_name(name[1:]):
            raise ValueError(f"hub identity {shown(name)} must be _<name>")
        cert_path = self.folder / f"client-{name}.crt"
        key_path = self.folder / f"client-{name}.key"
        with _locked(self.folder / ".ca.lock"):
            if not cert_path.exists():
                key = new_key()
                cert = _leaf(
                    self._key,
                    self._cert,
                    name,
                    key.public_key(),
                    usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                    valid_days=DEVICE_VALID_DAYS,
                )
                write_atomic(key_path, key_pem(key), mode=_KEY_MODE)
                write_atomic(cert_path, _pem(cert), mode=_PUBLIC_MODE)
                self._record(cert, name)
        return TlsFiles(self.ca_cert_path, cert_path, key_path)

    def revoke(self, name: str) -> int:
        """Revoke every certificate issued to `name` and rewrite the CRL atomically. The
        number newly revoked; IdentityError if none was ever issued to `name`. The broker
        takes it up with ChildBroker.cut_off_revoked (a running hub does so by itself)."""
        with _locked(self.folder / ".ca.lock"):
            issued = self._issued()
            mine = self._entries_of(issued, name)
            if not mine:
                raise IdentityError(f"no certificate was issued to {shown(name)}")
            fresh = [entry for entry in mine if entry["revoked_at"] is None]
            for entry in fresh:
                entry["revoked_at"] = _now().isoformat()
            _write_json(self.issued_path, issued)
            self._write_crl()
        return len(fresh)

    @staticmethod
    def _entries_of(issued: dict[str, Any], name: str) -> list[dict[str, Any]]:
        return [entry for entry in issued.values() if entry["name"] == name]

    def certificates_of(self, name: str) -> list[IssuedCertificate]:
        """Every certificate issued to `name`, oldest first (the console's device page)."""
        found = [
            IssuedCertificate(
                serial=int(serial),
                issued_at=dt.datetime.fromisoformat(entry["issued_at"]),
                # Recorded since the console shows it; older records lack it.
                expires=dt.datetime.fromisoformat(entry["expires"])
                if entry.get("expires")
                else None,
                revoked_at=dt.datetime.fromisoformat(entry["revoked_at"])
                if entry["revoked_at"]
                else None,
            )
            for serial, entry in self._issued().items()
            if entry["name"] == name
        ]
        return sorted(found, key=lambda c: c.issued_at)

    def issued_to(self, name: str) -> int:
        """How many certificates were ever issued to `name`."""
        return len(self._entries_of(self._issued(), name))

    def is_revoked(self, name: str) -> bool:
        """True when every certificate issued to `name` is revoked (and one was issued)."""
        mine = self._entries_of(self._issued(), name)
        return bool(mine) and all(entry["revoked_at"] is not None for entry in mine)

    def revoked_serials(self) -> list[int]:
        return sorted(
            int(serial) for serial, entry in self._issued().items() if entry["revoked_at"]
        )

    def _write_crl(self) -> None:
        revoked = [
            (int(serial), dt.datetime.fromisoformat(entry["revoked_at"]))
            for serial, entry in sorted(self._issued().items())
            if entry["revoked_at"]
        ]
        crl = build_crl(self._key, self._cert, revoked)
        write_atomic(self.crl_path, _pem(crl), mode=_PUBLIC_MODE)


class EnrollmentTokens:
    """One-time enrollment tokens, each bound to one device id, stored only as SHA-256
    hashes (the file reveals no usable token), expiring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        make_dirs(path.parent)

    def create(self, device_id: str, *, ttl: dt.timedelta = TOKEN_TTL) -> str:
        """A new token for `device_id`; shown once, never stored in the clear."""
        if not is_valid_name(device_id):
            raise ValueError(f"device id {shown(device_id)} is not a valid device id")
        if ttl <= dt.timedelta(0):
            raise ValueError(f"a token's lifetime must be positive, not {ttl}")
        token = secrets.token_urlsafe(32)
        with _locked(self.path.with_name(f".{self.path.name}.lock")):
            tokens = self._prune(_read_json(self.path))
            tokens[token_hash(token)] = {
                "device_id": device_id,
                "expires_at": (_now() + ttl).isoformat(),
            }
            _write_json(self.path, tokens)
        return token

    @staticmethod
    def _prune(tokens: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {
            digest: entry
            for digest, entry in tokens.items()
            if dt.datetime.fromisoformat(entry["expires_at"]) > now
        }

    def _find(self, tokens: dict[str, Any], token: str) -> tuple[str, dict[str, Any]]:
        digest = token_hash(token)
        for known, entry in tokens.items():
            if hmac.compare_digest(known, digest):
                if dt.datetime.fromisoformat(entry["expires_at"]) <= _now():
                    raise EnrollmentRefused("the enrollment token has expired")
                return known, entry
        raise EnrollmentRefused("unknown or already used enrollment token")

    def pending(self) -> list[str]:
        """Device ids with an unused, unexpired token."""
        return sorted(entry["device_id"] for entry in self._prune(_read_json(self.path)).values())

    def cancel(self, device_id: str) -> int:
        """Void every unused token made for `device_id`; how many there were."""
        with _locked(self.path.with_name(f".{self.path.name}.lock")):
            tokens = self._prune(_read_json(self.path))
            kept = {k: v for k, v in tokens.items() if v["device_id"] != device_id}
            _write_json(self.path, kept)
        return len(tokens) - len(kept)

    @contextlib.contextmanager
    def redeem_proof(self, device_id: str, proves: Callable[[str], bool]) -> Iterator[str]:
        """As redeem, for a device that shows its token without sending it (offline
        enrollment): `proves(token_sha256)` checks its proof against a stored token."""
        with _locked(self.path.with_name(f".{self.path.name}.lock")):
            tokens = _read_json(self.path)
            now = _now()
            for digest, entry in tokens.items():
                if entry["device_id"] != device_id or not proves(digest):
                    continue
                if dt.datetime.fromisoformat(entry["expires_at"]) <= now:
                    raise EnrollmentRefused("the enrollment token has expired")
                yield device_id
                del tokens[digest]
                _write_json(self.path, self._prune(tokens))
                return
            raise EnrollmentRefused(
                f"no unused enrollment token of {device_id} matches the request's proof"
            )

    @contextlib.contextmanager
    def redeem(self, token: str) -> Iterator[str]:
        """The device id of `token`; the token is consumed when the block succeeds, and
        stays usable when it raises (a bad CSR changes nothing)."""
        with _locked(self.path.with_name(f".{self.path.name}.lock")):
            tokens = _read_json(self.path)
            digest, entry = self._find(tokens, token)
            yield str(entry["device_id"])
            del tokens[digest]
            _write_json(self.path, self._prune(tokens))


def enroll(ca: DeviceCA, tokens: EnrollmentTokens, token: str, csr_pem: bytes) -> bytes:
    """Consume `token` and return the device's PEM certificate for `csr_pem`, whose CN
    must be the device id the token was made for. EnrollmentRefused / CsrRejected (an
    IdentityError) otherwise, and then the token is left as it was."""
    with tokens.redeem(token) as device_id:
        return ca.issue_device_certificate(csr_pem, device_id)
