"""The device CA's root at the key ceremony, so the hub never holds the root's private key.

Two ways to run a fleet's device CA (the operator's choice, README "Device CA"):

1. The hub makes its own CA on first use (hub.fleet.identity.DeviceCA): simplest; the CA
   key sits on the hub, and whoever takes the hub's identity folder can issue certificates
   until every device is re-enrolled under a new CA.
2. The ceremony makes an offline root CA and signs the hub's CA as an intermediate
   (path length 0: it can sign devices and servers, no further CA). The root key stays in
   the ceremony folder, encrypted with its own passphrase; the hub holds only its
   intermediate's key. Steps:

       hub:      edge-provision device-ca request --identity <hub identity dir>   -> ca.csr
       offline:  edge-provision device-ca init --ceremony C                       (once)
                 edge-provision device-ca sign ca.csr --ceremony C --out chain.pem
       hub:      edge-provision device-ca install chain.pem --identity <dir>
                     --root-fingerprint sha256:...   (printed by `init`, read out of band)

   The hub's ca.crt then holds the intermediate first and the root after it: the hub's own
   code reads the first certificate as its CA (the enrollment token's fingerprint is the
   intermediate's key), while TLS peers that load the file (Mosquitto's cafile, devices'
   pinned ca.crt, LAN peers) get the whole chain up to the self-signed root.

Certificates are built with `cryptography`'s X.509 builder; nothing here is hand-made.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.atomic import write_atomic
from edge_agent.sync.hubtrust import ca_fingerprint
from edge_agent.sync.identity import key_pem, new_key
from hub.fleet.identity import CA_NAME, ca_key_usage, self_signed_ca, x509_name
from provisioning.ceremony import MIN_PASSPHRASE_BYTES, CeremonyError

ROOT_KEY_FILE = "device-root-ca.key.pem"
ROOT_CERT_FILE = "device-root-ca.crt"
ROOT_NAME = "edge-fleet device root CA (offline)"
ROOT_VALID_DAYS = 20 * 365
HUB_CA_VALID_DAYS = 5 * 365
HUB_CA_KEY = "ca.key"
HUB_CA_CERT = "ca.crt"
HUB_CA_CSR = "ca.csr"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def init_device_root(ceremony: Path, passphrase: bytes, *, now: dt.datetime | None = None) -> str:
    """Make the offline device root CA in the ceremony folder; its fingerprint (to read to
    the hub's operator out of band)."""
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise CeremonyError(f"the passphrase is shorter than {MIN_PASSPHRASE_BYTES} bytes")
    if (ceremony / ROOT_CERT_FILE).exists():
        raise CeremonyError(f"{ceremony} already holds a device root CA; it is made once")
    now = now or dt.datetime.now(dt.UTC)
    key = new_key()
    cert = self_signed_ca(key, ROOT_NAME, valid_days=ROOT_VALID_DAYS, path_length=1, now=now)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    ceremony.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(ceremony / ROOT_KEY_FILE, encrypted, mode=0o600)
    write_atomic(ceremony / ROOT_CERT_FILE, _pem(cert), mode=0o644)
    return ca_fingerprint(cert)


def request_hub_ca(identity_dir: Path) -> Path:
    """On the hub: its CA key (kept) and a signing request for the ceremony."""
    if (identity_dir / HUB_CA_CERT).exists():
        raise CeremonyError(
            f"{identity_dir} already has a device CA ({HUB_CA_CERT}); a hub changes its CA only "
            "with a new identity folder (every device enrolls again)"
        )
    identity_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = identity_dir / HUB_CA_KEY
    if key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CeremonyError(f"{key_path} is not an EC key; remove it and request again")
    else:
        key = new_key()
        write_atomic(key_path, key_pem(key), mode=0o600)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509_name(CA_NAME))
        .sign(key, hashes.SHA256())
    )
    path = identity_dir / HUB_CA_CSR
    write_atomic(path, csr.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return path


def _load_root(
    ceremony: Path, passphrase: bytes
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    try:
        key = serialization.load_pem_private_key(
            (ceremony / ROOT_KEY_FILE).read_bytes(), password=passphrase
        )
        cert = x509.load_pem_x509_certificate((ceremony / ROOT_CERT_FILE).read_bytes())
    except FileNotFoundError:
        raise CeremonyError(f"{ceremony}: no device root CA; run `device-ca init` first") from None
    except (ValueError, TypeError) as exc:
        raise CeremonyError(
            f"cannot unlock the device root CA key (wrong passphrase?): {exc}"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise CeremonyError(f"{ceremony / ROOT_KEY_FILE} is not the key of {ROOT_CERT_FILE}")
    return key, cert


def sign_hub_ca(
    ceremony: Path,
    passphrase: bytes,
    csr_pem: bytes,
    *,
    days: int = HUB_CA_VALID_DAYS,
    now: dt.datetime | None = None,
) -> bytes:
    """The hub's intermediate CA certificate followed by the root (PEM), for `install`."""
    root_key, root = _load_root(ceremony, passphrase)
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CeremonyError(f"the hub's request is not a PEM certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise CeremonyError("the hub's request is not signed by its own key; make it again")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CeremonyError("the hub's request holds no EC key")
    now = now or dt.datetime.now(dt.UTC)
    until = min(now + dt.timedelta(days=days), root.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509_name(CA_NAME))
        .issuer_name(root.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
            critical=False,
        )
        .sign(root_key, hashes.SHA256())
    )
    return _pem(cert) + _pem(root)


def install_hub_ca(identity_dir: Path, chain_pem: bytes, root_fingerprint: str) -> x509.Certificate:
    """On the hub: check the signed chain and make it the hub's device CA. Refused, and
    nothing written, unless the first certificate is for the hub's own CA key, it is a CA
    signed by the second, and the second is the self-signed root whose fingerprint the
    operator read out of band."""
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as exc:
        raise CeremonyError(f"the chain is not PEM certificates: {exc}") from None
    if len(certs) != 2:
        raise CeremonyError(f"the chain holds {len(certs)} certificates, 2 are expected")
    hub_ca, root = certs
    try:
        key = serialization.load_pem_private_key((identity_dir / HUB_CA_KEY).read_bytes(), None)
    except FileNotFoundError:
        raise CeremonyError(
            f"{identity_dir}: no {HUB_CA_KEY}; run `device-ca request` first"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != hub_ca.public_key():
        raise CeremonyError("the chain's CA certificate is not for this hub's CA key")
    if ca_fingerprint(root) != root_fingerprint:
        raise CeremonyError(
            f"the chain's root is {ca_fingerprint(root)}, not the device root CA "
            f"{root_fingerprint} read out of band: it was not signed at this fleet's ceremony"
        )
    try:
        root.verify_directly_issued_by(root)
        hub_ca.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise CeremonyError("the hub's CA certificate is not signed by the chain's root") from None
    constraints = hub_ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    if not constraints.ca:
        raise CeremonyError("the hub's certificate is not a CA certificate")
    write_atomic(identity_dir / HUB_CA_CERT, _pem(hub_ca) + _pem(root), mode=0o644)
    (identity_dir / HUB_CA_CSR).unlink(missing_ok=True)
    return hub_ca
