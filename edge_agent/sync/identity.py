"""The device's identity: a key pair made here, and what enrollment with the hub brought.

    <data dir>/identity/device.key          the private key (0600); it never leaves the device
    <data dir>/identity/device.crt          the client certificate the hub issued
    <data dir>/identity/ca.crt              the hub CA the enrollment token named: it signed
                                            the certificate, the broker's and the hub's HTTPS
    <data dir>/identity/director-keys.json  the keys that sign this device's desired state
    <data dir>/identity/enrollment.json     device id, hub and broker address, download token

Keys are ECDSA P-256 (what Mosquitto's OpenSSL accepts everywhere). Enrollment writes the
whole set at once: `identity` is a symlink to a sibling folder, swapped in one rename after
everything the hub sent was verified (edge_agent.atomic.replace_folder). While
`enrollment.json` is missing the device is not enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ValidationError

from edge_agent.sync.addresses import TlsFiles

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
DIRECTOR_KEYS_FILE = "director-keys.json"
ENROLLMENT_FILE = "enrollment.json"
ROOT_FILE = "root.json"


class EnrollmentFailed(RuntimeError):
    """The hub refused, or could not be reached; the message says which and what to do."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_csr(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    """A certificate signing request for `key`, its subject CN `common_name`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name)
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


class Enrollment(BaseModel):
    device_id: str
    hub_url: str
    broker_url: str
    download_token: str


@dataclass(frozen=True)
class Identity:
    folder: Path

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.folder / CA_FILE, self.folder / CERT_FILE, self.folder / KEY_FILE)

    @property
    def director_keys_path(self) -> Path:
        return self.folder / DIRECTOR_KEYS_FILE

    @property
    def root_path(self) -> Path:
        return self.folder / ROOT_FILE

    def enrollment(self) -> Enrollment | None:
        """What enrollment brought, or None before it; ValueError for a damaged record."""
        path = self.folder / ENROLLMENT_FILE
        try:
            return Enrollment.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValidationError as exc:
            raise ValueError(
                f"{path} is damaged ({exc.error_count()} problems): enroll again"
            ) from None

    def existing_key(self) -> ec.EllipticCurvePrivateKey | None:
        """The key of an earlier enrollment (kept when enrolling again), or None."""
        path = self.folder / KEY_FILE
        if not path.exists():
            return None
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key")
        return key

    def enroll(self, hub_url: str, device_id: str, token: str, trust_dir: Path) -> Enrollment:
        """Join the hub at `hub_url` with the token `edge-hub device enroll` printed; see
        edge_agent.sync.enroll. Nothing is written unless everything verified."""
        from edge_agent.sync.enroll import enroll

        return enroll(self, hub_url, device_id, token, trust_dir)
