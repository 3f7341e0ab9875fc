"""`edge-agent enroll`: join a fleet, trusting nothing the hub merely claims.

1. The token (`<secret>@sha256:<hex>`) names the hub's CA; the hub must present that CA
   (edge_agent.sync.hubtrust) before it is sent anything.
2. The CSR goes over TLS verified against that CA alone.
3. The answer must hold together: a certificate from that CA for this device's key, the
   same CA, Ed25519 director keys, a TUF root this device may trust
   (edge_agent.updates.rootchain: a device that trusts a root keeps it).
4. Only then the identity folder is replaced in one swap (edge_agent.atomic.replace_folder)
   and, on a device that trusted no root, the hub's root is pinned.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import ValidationError

from edge_agent.atomic import replace_folder, write_atomic
from edge_agent.protocol import METADATA_DIR, check_name
from edge_agent.protocol.enrollment import ENROLL_PATH, EnrollmentRequest, EnrollmentResponse
from edge_agent.sync.hubtrust import (
    HubNotTrusted,
    Ticket,
    ca_fingerprint,
    ca_pem,
    fetch_pinned_ca,
    verifying_context,
)
from edge_agent.sync.identity import (
    CA_FILE,
    CERT_FILE,
    DIRECTOR_KEYS_FILE,
    ENROLLMENT_FILE,
    KEY_FILE,
    ROOT_FILE,
    Enrollment,
    EnrollmentFailed,
    Identity,
    key_pem,
    make_csr,
    new_key,
)
from edge_agent.updates.errors import NotTrusted
from edge_agent.updates.rootchain import check_hub_root_chain, parse_root

ENROLL_TIMEOUT_S = 30.0
MAX_ROOT_BYTES = 512 * 1024


def enroll(
    identity: Identity, hub_url: str, device_id: str, token: str, trust_dir: Path
) -> Enrollment:
    """Enroll with the hub at `hub_url`; EnrollmentFailed (nothing written) if refused."""
    check_name(device_id)
    try:
        ticket = Ticket.parse(token)
    except ValueError as exc:
        raise EnrollmentFailed(str(exc)) from None
    hub_url = hub_url.rstrip("/")
    if not hub_url.startswith("https://"):
        raise EnrollmentFailed(
            f"{hub_url}: enrollment needs the hub's https:// address, so that the hub can be "
            "checked against the token's CA fingerprint"
        )
    try:
        ca = fetch_pinned_ca(hub_url, ticket.ca_fingerprint, timeout_s=ENROLL_TIMEOUT_S)
    except HubNotTrusted as exc:
        raise EnrollmentFailed(str(exc)) from None
    hub_ca = ca_pem(ca)
    key = identity.existing_key() or new_key()  # in memory until everything is verified
    answer = _post_csr(hub_url, hub_ca, device_id, ticket.secret, key)
    _check_answer(answer, device_id, ca, key)
    root_to_pin = _root_to_pin(hub_url, hub_ca, answer, trust_dir)
    return save_enrollment(identity, answer, key, hub_url, hub_ca, root_to_pin, trust_dir)


def save_enrollment(
    identity: Identity,
    answer: EnrollmentResponse,
    key: ec.EllipticCurvePrivateKey,
    hub_url: str,
    hub_ca: str,
    root_to_pin: bytes | None,
    trust_dir: Path,
) -> Enrollment:
    """Install a verified answer (online or by stick): the identity folder in one swap,
    then the hub's root where the device trusted none."""
    enrollment = Enrollment(
        device_id=answer.device_id,
        hub_url=hub_url,
        broker_url=answer.broker_url,
        download_token=answer.download_token,
    )
    replace_folder(
        identity.folder,
        {
            KEY_FILE: (key_pem(key), 0o600),
            CERT_FILE: (answer.certificate_pem.encode(), 0o644),
            CA_FILE: (hub_ca.encode(), 0o644),
            DIRECTOR_KEYS_FILE: (json.dumps(answer.director_keys).encode(), 0o644),
            ROOT_FILE: (answer.tuf_root.encode(), 0o644),
            # The record that says the device is enrolled. It holds a token: 0600.
            ENROLLMENT_FILE: (enrollment.model_dump_json().encode(), 0o600),
        },
    )
    if root_to_pin is not None:
        write_atomic(trust_dir / ROOT_FILE, root_to_pin)
    return enrollment


def _post_csr(
    hub_url: str, hub_ca: str, device_id: str, secret: str, key: ec.EllipticCurvePrivateKey
) -> EnrollmentResponse:
    request = EnrollmentRequest(
        device_id=device_id, token=secret, csr_pem=make_csr(key, device_id).decode()
    )
    url = hub_url + ENROLL_PATH
    try:
        reply = httpx.post(
            url, content=request.model_dump_json(), timeout=ENROLL_TIMEOUT_S,
            headers={"content-type": "application/json"}, verify=verifying_context(hub_ca),
        )  # fmt: skip
    except httpx.HTTPError as exc:
        raise EnrollmentFailed(
            f"cannot reach the hub at {url} over TLS verified against its CA: {exc}; check "
            "that the address is one the hub's certificate names ([artifacts] host)"
        ) from None
    if reply.status_code != 200:
        raise EnrollmentFailed(f"the hub refused enrollment: {_problem(reply)}")
    try:
        return EnrollmentResponse.model_validate_json(reply.content)
    except ValidationError as exc:
        raise EnrollmentFailed(f"the hub's answer is not readable: {exc}") from None


def _check_answer(
    answer: EnrollmentResponse,
    device_id: str,
    ca: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
) -> None:
    """The answer must be for this device: a certificate for our key from the CA the token
    names, that same CA, and director keys that are Ed25519 keys."""
    if answer.device_id != device_id:
        raise EnrollmentFailed(f"the hub answered for {answer.device_id}, not {device_id}")
    try:
        answered_ca = x509.load_pem_x509_certificate(answer.ca_pem.encode())
        cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrollmentFailed(f"the hub's certificate is not from its CA: {exc}") from None
    if ca_fingerprint(answered_ca) != ca_fingerprint(ca):
        raise EnrollmentFailed("the hub answered with another CA than the one the token names")
    if cert.public_key() != key.public_key():
        raise EnrollmentFailed("the hub's certificate is not for this device's key")
    for index, pem in enumerate(answer.director_keys):
        try:
            director = load_pem_public_key(pem.encode())
        except ValueError as exc:
            raise EnrollmentFailed(f"director key {index} is unreadable: {exc}") from None
        if not isinstance(director, Ed25519PublicKey):
            raise EnrollmentFailed(f"director key {index} is not an Ed25519 key")


def _root_to_pin(
    hub_url: str, hub_ca: str, answer: EnrollmentResponse, trust_dir: Path
) -> bytes | None:
    """The hub's root for a device that trusts none; None when the device keeps its own
    (the hub proved its roots extend it). EnrollmentFailed when not acceptable."""
    offered = answer.tuf_root.encode()
    pinned = trust_dir / ROOT_FILE
    try:
        parse_root(offered, f"the root {hub_url} sent")
        if not pinned.exists():
            return offered
        with httpx.Client(
            verify=verifying_context(hub_ca),
            timeout=ENROLL_TIMEOUT_S,
            headers={"Authorization": f"Bearer {answer.download_token}"},
        ) as client:

            def fetch_root(version: int) -> bytes | None:
                url = f"{hub_url}/{METADATA_DIR}/{version}.root.json"
                try:
                    reply = client.get(url)
                except httpx.HTTPError as exc:
                    raise EnrollmentFailed(f"cannot read {url}: {exc}") from None
                if reply.status_code == 404:
                    return None
                if reply.status_code != 200 or len(reply.content) > MAX_ROOT_BYTES:
                    raise EnrollmentFailed(f"{url}: HTTP {reply.status_code}")
                return reply.content

            check_hub_root_chain(pinned.read_bytes(), fetch_root, where=hub_url)
    except NotTrusted as exc:
        raise EnrollmentFailed(str(exc)) from None
    return None


def _problem(reply: httpx.Response) -> str:
    """The hub's error message from a JSON error body, else the status and body text."""
    try:
        return str(reply.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status_code}: {reply.text[:200]}"
