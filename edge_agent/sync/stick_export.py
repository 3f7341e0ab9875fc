"""`edge-agent export PATH`: the outbox onto a USB stick, for a site with no link.

State reports and install events go into one file signed by the device key (the hub checks
it against the device certificate it issued); anonymous telemetry goes into a file apart,
unsigned, under a random name, so the hub does not learn which device sent which report
from the export itself (the VOPRF token in each report is what the hub checks). Layout:
edge_agent.protocol.bundle.

Nothing leaves the outbox here: every exported message stays until a receipt for it comes
back on a later stick (`apply_receipts`), or the link delivers it. The hub stores each
message id once, so a message that goes both ways, or on two sticks, counts once.
`exported.json` in the sync folder remembers what went onto a stick, for the status.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.atomic import write_atomic
from edge_agent.protocol import (
    Envelope,
    InstallEvent,
    ModelReport,
    ReportedState,
    UpdateEvent,
    UpdateResult,
)
from edge_agent.protocol.bundle import (
    DEVICE_RETURNS_DIR,
    MAX_RETURN_MESSAGES,
    MAX_STICK_TOKENS,
    RETURNS_DIR,
    TELEMETRY_RETURNS_DIR,
    DeviceExport,
    ReturnedMessage,
    SignedDeviceExport,
    TelemetryReturn,
    export_signing_bytes,
)
from edge_agent.store import ModelStore
from edge_agent.sync.identity import Identity
from edge_agent.sync.link import enqueue
from edge_agent.sync.outbox import Outbox, OutboxItem, OutboxKind
from edge_agent.telemetry.stick_tokens import pending_requests

EXPORTED_FILE = "exported.json"


@dataclass(frozen=True)
class ExportResult:
    device_file: Path
    telemetry_file: Path | None
    messages: int
    telemetry: int


def _returned(item: OutboxItem) -> ReturnedMessage:
    return ReturnedMessage(
        message_id=item.message_id,
        topic=item.topic,
        payload=base64.b64encode(item.payload).decode(),
    )


def _all_pending(outbox: Outbox) -> list[OutboxItem]:
    items: list[OutboxItem] = []
    after: int | None = None
    while len(items) < MAX_RETURN_MESSAGES:
        batch = outbox.pending(1000, after=after)
        if not batch:
            break
        items.extend(batch)
        after = batch[-1].seq
    return items[:MAX_RETURN_MESSAGES]


def _write_new(path: Path, data: bytes) -> None:
    """Write a file on the stick and make it durable before the stick is pulled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def export_outbox(
    stick: Path,
    outbox: Outbox,
    identity: Identity,
    device_id: str,
    sync_dir: Path,
    telemetry_dir: Path | None = None,
) -> ExportResult:
    """`telemetry_dir`: where the service leaves blinded token requests (default: beside
    `sync_dir`, as the agent's data folder lays them out)."""
    key_file, cert_file = identity.tls.key_file, identity.tls.cert_file
    if key_file is None or cert_file is None or not cert_file.is_file():
        raise ValueError("this device is not enrolled (no key and certificate): enroll first")
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: not this device's EC key; enroll again")
    certificate = cert_file.read_text()
    items = _all_pending(outbox)
    telemetry = [_returned(i) for i in items if i.kind is OutboxKind.TELEMETRY]
    own = [_returned(i) for i in items if i.kind is not OutboxKind.TELEMETRY]
    export = DeviceExport(
        device_id=device_id,
        export_id=uuid.uuid4().hex,
        created_at=datetime.now(UTC),
        messages=own,
        token_requests=pending_requests(telemetry_dir or sync_dir.parent / "telemetry")[
            -MAX_STICK_TOKENS:
        ],
    )
    signed = export.model_dump(mode="json")
    signature = key.sign(export_signing_bytes(signed), ec.ECDSA(hashes.SHA256()))
    envelope = SignedDeviceExport(
        signed=signed,
        signature=base64.b64encode(signature).decode(),
        certificate=certificate,
    )
    returns = stick / RETURNS_DIR
    device_file = returns / DEVICE_RETURNS_DIR / device_id / f"{export.export_id}.json"
    _write_new(device_file, envelope.model_dump_json().encode())
    telemetry_file = None
    if telemetry:
        telemetry_file = returns / TELEMETRY_RETURNS_DIR / f"{uuid.uuid4().hex}.json"
        _write_new(telemetry_file, TelemetryReturn(messages=telemetry).model_dump_json().encode())
    _remember_exported(sync_dir, (i.message_id for i in items), export.export_id)
    return ExportResult(device_file, telemetry_file, len(own), len(telemetry))


def _remember_exported(sync_dir: Path, message_ids: Iterable[str], export_id: str) -> None:
    path = sync_dir / EXPORTED_FILE
    try:
        known: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        known = {}
    known.update(dict.fromkeys(message_ids, export_id))
    write_atomic(path, json.dumps(known).encode())


def apply_receipts(outbox: Outbox, sync_dir: Path, message_ids: Iterable[str]) -> int:
    """The hub has stored these messages: they leave the outbox now."""
    ids = list(message_ids)
    removed = outbox.ack_many(ids)
    path = sync_dir / EXPORTED_FILE
    try:
        known: dict[str, str] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return removed
    for message_id in ids:
        known.pop(message_id, None)
    write_atomic(path, json.dumps(known).encode())
    return removed


def queue_import_report(
    outbox: Outbox,
    device_id: str,
    agent_version: str,
    store: ModelStore,
    installed: Iterable[tuple[str, str | None, str | None]],
    failures: Iterable[tuple[str, str, str]],
) -> None:
    """What an import did, as the link would report it: an install event per release
    (healthy or failed, with the version before) and one reported state of every model
    touched. `installed`: (model, version now active, version before)."""
    reports: dict[str, ModelReport] = {}

    def describe(model: str) -> ModelReport:
        active, previous = store.active(model), store.previous(model)
        floor = store.floor(model)
        return ModelReport(
            active=active.version if active else None,
            previous=previous.version if previous else None,
            floor=str(floor) if floor else None,
        )

    for model, version, before in installed:
        if version is not None and version != before:
            event = InstallEvent(
                model=model, version=version, event=UpdateEvent.HEALTHY, from_version=before
            )
            enqueue(outbox, Envelope.of(event, device_id=device_id))
        reports[model] = describe(model).model_copy(update={"last_result": UpdateResult.SUCCEEDED})
    for model, version, error in failures:
        active = store.active(model)
        event = InstallEvent(
            model=model,
            version=version,
            event=UpdateEvent.FAILED,
            from_version=active.version if active else None,
            error=error[:2000],
        )
        enqueue(outbox, Envelope.of(event, device_id=device_id))
        reports[model] = describe(model).model_copy(
            update={"last_result": UpdateResult.FAILED, "last_error": error[:2000]}
        )
    state = ReportedState(agent_version=agent_version, models=reports)
    enqueue(outbox, Envelope.of(state, device_id=device_id))
