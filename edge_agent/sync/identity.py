"""The device's identity: a key pair made here, and what enrollment with the hub brought.

    <data dir>/identity/device.key          the private key (0600); it never leaves the device
    <data dir>/identity/device.crt          the client certificate the hub issued
    <data dir>/identity/ca.crt              the CA that signed it and the broker's certificate
    <data dir>/identity/director-keys.json  the keys that sign this device's desired state
    <data dir>/identity/enrollment.json     device id, hub and broker address, download token

Keys are ECDSA P-256 (what Mosquitto's OpenSSL accepts everywhere). `enrollment.json` is
written last: while it is missing the device is not enrolled, whatever else is there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ValidationError

from edge_agent.atomic import make_dirs, write_atomic
from edge_agent.protocol import check_name
from edge_agent.protocol.enrollment import ENROLL_PATH, EnrollmentRequest, EnrollmentResponse
from edge_agent.sync.addresses import TlsFiles

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
DIRECTOR_KEYS_FILE = "director-keys.json"
ENROLLMENT_FILE = "enrollment.json"
ROOT_FILE = "root.json"
ENROLL_TIMEOUT_S = 30.0


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

    def key(self) -> ec.EllipticCurvePrivateKey:
        """The device's private key, made on first use (it is kept for re-enrollment)."""
        path = self.folder / KEY_FILE
        if not path.exists():
            make_dirs(self.folder)
            self.folder.chmod(0o700)
            write_atomic(path, key_pem(new_key()), mode=0o600)
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} does not hold an EC private key")
        return key

    def enroll(self, hub_url: str, device_id: str, token: str) -> Enrollment:
        """Send a CSR with `token` to the hub at `hub_url`, and keep what it answers."""
        import httpx

        check_name(device_id)
        request = EnrollmentRequest(
            device_id=device_id, token=token, csr_pem=make_csr(self.key(), device_id).decode()
        )
        url = hub_url.rstrip("/") + ENROLL_PATH
        try:
            reply = httpx.post(
                url, content=request.model_dump_json(), timeout=ENROLL_TIMEOUT_S,
                headers={"content-type": "application/json"},
            )  # fmt: skip
        except httpx.HTTPError as exc:
            raise EnrollmentFailed(
                f"cannot reach the hub at {url}: {exc}; check the address and that "
                "`edge-hub serve` runs there"
            ) from None
        if reply.status_code != 200:
            raise EnrollmentFailed(f"the hub refused enrollment: {_problem(reply)}")
        try:
            answer = EnrollmentResponse.model_validate_json(reply.content)
        except ValidationError as exc:
            raise EnrollmentFailed(f"the hub's answer is not readable: {exc}") from None
        if answer.device_id != device_id:
            raise EnrollmentFailed(f"the hub answered for {answer.device_id}, not {device_id}")
        return self._keep(hub_url, answer)

    def _keep(self, hub_url: str, answer: EnrollmentResponse) -> Enrollment:
        write_atomic(self.folder / CERT_FILE, answer.certificate_pem.encode())
        write_atomic(self.folder / CA_FILE, answer.ca_pem.encode())
        write_atomic(self.director_keys_path, json.dumps(answer.director_keys).encode())
        write_atomic(self.root_path, answer.tuf_root.encode())
        enrollment = Enrollment(
            device_id=answer.device_id,
            hub_url=hub_url.rstrip("/"),
            broker_url=answer.broker_url,
            download_token=answer.download_token,
        )
        # Last: the record that says the device is enrolled. It holds a token: 0600.
        write_atomic(
            self.folder / ENROLLMENT_FILE, enrollment.model_dump_json().encode(), mode=0o600
        )
        return enrollment


def _problem(reply: object) -> str:
    """The hub's error message from a JSON error body, else the status and body text."""
    import httpx

    assert isinstance(reply, httpx.Response)
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
