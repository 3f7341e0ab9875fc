"""`edge-agent enroll --offline PATH`: join a fleet by USB stick, with no network at all.

First run: the device makes its key (kept in `<data>/enroll-pending.key`, 0600, until the
answer comes), and writes a request onto the stick: its device id, a CSR, and a proof of the
one-time token (edge_agent.protocol.bundle.enrollment_proof; the token itself never goes on
the stick). `edge-hub enroll-import PATH` answers on the same stick.

Second run, with the answer on the stick: the hub CA in it must have the SHA-256 the token
names (the token came out of band, from the operator), the certificate must be that CA's,
for this device and this key; director keys must be Ed25519; the hub's TUF root is pinned
on a device that trusts none, and otherwise must extend the pinned one (the answer carries
every root version). Only then is the identity folder replaced in one swap, as online.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from edge_agent.atomic import write_atomic
from edge_agent.protocol import check_name
from edge_agent.protocol.bundle import (
    ENROLL_DIR,
    MAX_ENROLL_FILE_BYTES,
    OfflineEnrollmentRequest,
    OfflineEnrollmentResponse,
    enrollment_proof,
    token_sha256,
)
from edge_agent.sync.enroll import _check_answer, save_enrollment
from edge_agent.sync.hubtrust import Ticket, ca_fingerprint
from edge_agent.sync.identity import (
    ROOT_FILE,
    Enrollment,
    EnrollmentFailed,
    Identity,
    key_pem,
    make_csr,
    new_key,
)
from edge_agent.updates.errors import NotTrusted, Refused
from edge_agent.updates.rootchain import check_hub_root_chain, parse_root
from edge_agent.updates.stick import read_capped

PENDING_KEY_FILE = "enroll-pending.key"


def _pending_key(identity: Identity, pending: Path) -> tuple[ec.EllipticCurvePrivateKey, bool]:
    """The key to enroll: an earlier enrollment's, the pending request's, or a new one
    (True: not yet saved)."""
    existing = identity.existing_key()
    if existing is not None:
        return existing, False
    if pending.exists():
        key = serialization.load_pem_private_key(pending.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise EnrollmentFailed(f"{pending} holds no EC key; delete it and start again")
        return key, False
    return new_key(), True


def enroll_offline(
    identity: Identity, stick: Path, device_id: str, token: str, data_dir: Path, trust_dir: Path
) -> Enrollment | None:
    """Complete from the hub's answer on the stick (the Enrollment), or write the request
    (None) when there is no answer yet. EnrollmentFailed, with nothing written, if the
    answer does not verify."""
    check_name(device_id)
    try:
        ticket = Ticket.parse(token)
    except ValueError as exc:
        raise EnrollmentFailed(str(exc)) from None
    pending = data_dir / PENDING_KEY_FILE
    key, fresh = _pending_key(identity, pending)
    folder = stick / ENROLL_DIR
    if (folder / "responses" / f"{device_id}.json").exists():
        return _complete(identity, folder, device_id, ticket, key, pending, trust_dir)
    if fresh:
        write_atomic(pending, key_pem(key), mode=0o600)
    csr = make_csr(key, device_id).decode()
    request = OfflineEnrollmentRequest(
        device_id=device_id,
        csr_pem=csr,
        proof=enrollment_proof(token_sha256(ticket.secret), device_id, csr),
    )
    path = folder / "requests" / f"{device_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(request.model_dump_json())
    return None


def _complete(
    identity: Identity,
    folder: Path,
    device_id: str,
    ticket: Ticket,
    key: ec.EllipticCurvePrivateKey,
    pending: Path,
    trust_dir: Path,
) -> Enrollment:
    try:
        data = read_capped(folder / "responses", f"{device_id}.json", MAX_ENROLL_FILE_BYTES)
        response = OfflineEnrollmentResponse.model_validate_json(data)
        ca = x509.load_pem_x509_certificate(response.answer.ca_pem.encode())
    except (Refused, ValidationError, ValueError) as exc:
        raise EnrollmentFailed(f"the hub's answer on the stick is not readable: {exc}") from None
    if ca_fingerprint(ca) != ticket.ca_fingerprint:
        raise EnrollmentFailed(
            f"the hub CA on the stick has {ca_fingerprint(ca)}, the token names "
            f"{ticket.ca_fingerprint}: this answer is not from your hub; nothing was changed"
        )
    answer = response.answer
    _check_answer(answer, device_id, ca, key)
    root_to_pin = _root_to_pin(response, trust_dir)
    enrollment = save_enrollment(
        identity, answer, key, response.hub_url, answer.ca_pem, root_to_pin, trust_dir
    )
    pending.unlink(missing_ok=True)
    return enrollment


def _root_to_pin(response: OfflineEnrollmentResponse, trust_dir: Path) -> bytes | None:
    offered = response.answer.tuf_root.encode()
    pinned = trust_dir / ROOT_FILE
    try:
        parse_root(offered, "the root on the stick")
        if not pinned.exists():
            return offered
        by_version = {}
        for text in response.roots:
            version = json.loads(text)["signed"]["version"]
            by_version[int(version)] = text.encode()
        check_hub_root_chain(pinned.read_bytes(), by_version.get, where="the stick")
    except (NotTrusted, ValueError, KeyError, TypeError) as exc:
        raise EnrollmentFailed(str(exc)) from None
    return None
