"""`edge-hub import PATH`: what devices wrote back onto a stick, into the hub database.

Each device file (edge-returns/devices/<id>/<export-id>.json) must carry a certificate that
the hub's device CA issued to that device id (not revoked in the hub database) and a
signature by its key over the export; every message in it must be addressed from that
device. The messages then go through the MQTT ingest's own BatchWriter, which stores each
message id once: the same stick twice, or a message that also came over the link, changes
nothing the second time. Telemetry files are taken only as telemetry, which ingest accepts
only with a valid VOPRF token, and stay unlinked from the device files.

Receipts: every message id read from a device file is added to `<receipts>/<device>.json`;
the next `usb export` for that device carries it, signed with the bundle, and the device
drops those messages from its outbox then (never before the hub has them).
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError
from sqlalchemy import Engine

from edge_agent.atomic import write_atomic
from edge_agent.protocol.bundle import (
    DEVICE_RETURNS_DIR,
    MAX_RETURN_BYTES,
    MAX_STICK_TOKENS,
    RETURNS_DIR,
    TELEMETRY_RETURNS_DIR,
    DeviceExport,
    Receipt,
    ReturnedMessage,
    SignedDeviceExport,
    TelemetryReturn,
    export_signing_bytes,
)
from edge_agent.protocol.errors import MessageError
from edge_agent.protocol.messages import MessageKind, decode
from edge_agent.protocol.tokens import TokenResponse
from hub.db import session
from hub.fleet.models import Device
from hub.ingest.consumer import BatchWriter
from hub.telemetry.issuance import IssuanceRefused, TokenIssuer
from hub.telemetry.keys import TokenVerifier

MAX_RECEIPT_IDS = 1_000_000


class ReturnRefused(Exception):
    """A file on the stick that the hub will not ingest; the message says why."""


@dataclass
class ImportSummary:
    stored: int = 0
    duplicates: int = 0
    refused_files: list[str] = field(default_factory=list)
    refused_messages: Counter[str] = field(default_factory=Counter)
    devices: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    tokens_refused: list[str] = field(default_factory=list)


def _read_file(path: Path) -> bytes:
    """A plain file's bytes (no link, no FIFO), at most MAX_RETURN_BYTES."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReturnRefused(f"{path}: not a regular file")
        data = handle.read(MAX_RETURN_BYTES + 1)
    if len(data) > MAX_RETURN_BYTES:
        raise ReturnRefused(f"{path}: larger than {MAX_RETURN_BYTES} bytes")
    return data


def verify_export(data: bytes, ca: x509.Certificate, engine: Engine) -> DeviceExport:
    """The export, once its certificate and signature check out for its device."""
    try:
        envelope = SignedDeviceExport.model_validate_json(data)
        export = DeviceExport.model_validate(envelope.signed)
        cert = x509.load_pem_x509_certificate(envelope.certificate.encode())
        signature = base64.b64decode(envelope.signature, validate=True)
    except (ValidationError, ValueError) as exc:
        raise ReturnRefused(f"malformed device export: {exc}") from None
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ReturnRefused("its certificate was not issued by this hub's device CA") from None
    now = datetime.now(UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ReturnRefused("its device certificate is not valid now")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != export.device_id:
        raise ReturnRefused(f"its certificate is not {export.device_id}'s")
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ReturnRefused("its certificate holds no EC key")
    try:
        key.verify(signature, export_signing_bytes(envelope.signed), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReturnRefused(
            f"the signature is not {export.device_id}'s: the file was altered"
        ) from None
    with session(engine) as db:
        device = db.get(Device, export.device_id)
        if device is None or device.revoked_at is not None:
            raise ReturnRefused(f"{export.device_id} is unknown to this hub or revoked")
    return export


def _items(messages: list[ReturnedMessage]) -> list[tuple[str, bytes]]:
    return [(m.topic, base64.b64decode(m.payload)) for m in messages]


def _foreign(items: list[tuple[str, bytes]], device_id: str | None) -> str | None:
    """Why a message may not come from this file, or None. device_id None: telemetry."""
    for topic, payload in items:
        try:
            envelope = decode(topic, payload)
        except MessageError:
            continue  # the writer refuses and counts it
        if device_id is None and envelope.kind is not MessageKind.TELEMETRY:
            return f"a {envelope.kind} message in a telemetry file"
        if device_id is not None and envelope.device_id != device_id:
            return f"a message of {envelope.device_id or 'no device'} in {device_id}'s export"
    return None


def import_returns(
    stick: Path, engine: Engine, ca_cert: Path, receipts_dir: Path, tokens: TokenVerifier | None
) -> ImportSummary:
    ca = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    writer = BatchWriter(engine, tokens=tokens)
    issuer = TokenIssuer(engine, tokens.keys) if tokens is not None else None
    summary = ImportSummary()
    receipts: dict[str, set[str]] = {}
    answers: dict[str, list[TokenResponse]] = {}
    returns = stick / RETURNS_DIR
    for path in sorted((returns / DEVICE_RETURNS_DIR).glob("*/*.json")):
        try:
            export = verify_export(_read_file(path), ca, engine)
            items = _items(export.messages)
            if (why := _foreign(items, export.device_id)) is not None:
                raise ReturnRefused(why)
        except (ReturnRefused, OSError, ValueError) as exc:
            summary.refused_files.append(f"{path}: {exc}")
            continue
        _write(writer, items, summary)
        summary.devices.add(export.device_id)
        receipts.setdefault(export.device_id, set()).update(m.message_id for m in export.messages)
        if issuer is not None and export.token_requests:
            answers[export.device_id] = _issue(issuer, export, summary)
    for path in sorted((returns / TELEMETRY_RETURNS_DIR).glob("*.json")):
        try:
            items = _items(TelemetryReturn.model_validate_json(_read_file(path)).messages)
            if (why := _foreign(items, None)) is not None:
                raise ReturnRefused(why)
        except (ReturnRefused, OSError, ValueError) as exc:
            summary.refused_files.append(f"{path}: {exc}")
            continue
        _write(writer, items, summary)
    for device_id, ids in receipts.items():
        _add_receipt(receipts_dir, device_id, ids, answers.get(device_id, []))
    return summary


def _issue(
    issuer: TokenIssuer, export: DeviceExport, summary: ImportSummary
) -> list[TokenResponse]:
    """Evaluate the device's blinded token requests, once per device and week (the issuer's
    record refuses a second one, whether asked online or by an earlier stick)."""
    issued: list[TokenResponse] = []
    for request in export.token_requests:
        try:
            issued.append(issuer.issue(export.device_id, request))
            summary.tokens_issued += 1
        except IssuanceRefused as exc:
            # The same stick twice: the answer already waits in the receipt and stays.
            summary.tokens_refused.append(f"{export.device_id} {request.period}: {exc.code}")
    return issued


def _write(writer: BatchWriter, items: list[tuple[str, bytes]], summary: ImportSummary) -> None:
    for start in range(0, len(items), 500):
        result = writer.write(items[start : start + 500])
        if result is None:
            raise OSError("the hub database went away during the import; run it again")
        summary.stored += result.stored
        summary.duplicates += result.duplicates
        summary.refused_messages.update(result.refused)


def _add_receipt(
    receipts_dir: Path, device_id: str, ids: set[str], tokens: list[TokenResponse]
) -> None:
    path = receipts_dir / f"{device_id}.json"
    try:
        earlier = Receipt.model_validate_json(path.read_bytes())
        known, held = earlier.message_ids, earlier.tokens
    except FileNotFoundError:
        known, held = [], []
    merged = list(dict.fromkeys([*known, *sorted(ids)]))[-MAX_RECEIPT_IDS:]
    # One answer a period, the newest; older periods are no longer worth carrying.
    by_period = {answer.period: answer for answer in [*held, *tokens]}
    kept = [by_period[period] for period in sorted(by_period)[-MAX_STICK_TOKENS:]]
    receipts_dir.mkdir(parents=True, exist_ok=True)
    receipt = Receipt(device_id=device_id, message_ids=merged, tokens=kept)
    write_atomic(path, receipt.model_dump_json().encode())


def describe(summary: ImportSummary) -> str:
    return json.dumps(
        {
            "devices": sorted(summary.devices),
            "stored": summary.stored,
            "duplicates": summary.duplicates,
            "refused_messages": dict(summary.refused_messages),
            "refused_files": summary.refused_files,
            "tokens_issued": summary.tokens_issued,
            "tokens_refused": summary.tokens_refused,
        }
    )
