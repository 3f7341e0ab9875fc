"""Signed desired state: which release each model of one device should run.

The hub signs it with its director key (Ed25519, separate from the TUF keys, as in Uptane)
over canonical JSON of the signed part: sorted keys, no whitespace, ASCII only. The agent
verifies in a fixed order and uses nothing before the signature holds: trusted key,
signature over the bytes as received, then the content (readable, this device, not
expired, newer sequence).

Not checked here, and required before acting: that each referenced release is still listed
by the verified TUF targets, and is not below the model's version floor. Those need the
agent's TUF client and store; this module stays pure.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from packaging.version import Version
from pydantic import Field, ValidationError, field_validator, model_validator

from edge_agent.protocol.errors import (
    BadSignature,
    Expired,
    MalformedDesired,
    Replayed,
    UnknownKey,
    WrongDevice,
    describe,
)
from edge_agent.protocol.fields import ModelName, ReleaseVersion
from edge_agent.protocol.layout import manifest_target
from edge_agent.protocol.messages import (
    DeviceId,
    SignedDesired,
    UtcDateTime,
    Wire,
)
from edge_agent.protocol.window import MaintenanceWindow

DESIRED_SCHEMA_VERSION = 1


class DesiredRelease(Wire):
    version: ReleaseVersion
    manifest: str  # TUF target path of the release's manifest


class DesiredState(Wire):
    schema_version: int = Field(default=DESIRED_SCHEMA_VERSION, ge=1)
    device_id: DeviceId
    sequence: int = Field(ge=1)  # per device, strictly increasing
    issued_at: UtcDateTime
    expires: UtcDateTime
    models: dict[ModelName, DesiredRelease] = Field(default_factory=dict)
    # When the device may activate what it downloaded; None: at once. Signed with the rest,
    # so a device away from the hub still obeys it. Optional: older states stay valid.
    window: MaintenanceWindow | None = None
    # The director's signed rollback statement: model -> the release it rolls back FROM.
    # Only with it may an agent go below its version floor, and only to its kept previous
    # version (edge_agent.updates.rollback); the sequence and expiry above stop a replay.
    rollbacks: dict[ModelName, ReleaseVersion] = Field(default_factory=dict)

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value > DESIRED_SCHEMA_VERSION:
            raise ValueError(
                f"schema version {value} is newer than this agent understands "
                f"({DESIRED_SCHEMA_VERSION}); update the agent first"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.expires <= self.issued_at:
            raise ValueError("expires must be after issued_at")
        for model, release in self.models.items():
            expected = manifest_target(model, release.version)
            if release.manifest != expected:
                raise ValueError(f"models.{model}.manifest must be {expected}")
        for model, rolled_back_from in self.rollbacks.items():
            assigned = self.models.get(model)
            if assigned is None:
                raise ValueError(f"rollbacks.{model} names a model this state does not assign")
            if Version(assigned.version) >= Version(rolled_back_from):
                raise ValueError(
                    f"rollbacks.{model} must name a release newer than the assigned "
                    f"{assigned.version}, got {rolled_back_from}"
                )
        return self


def key_id(public_key: Ed25519PublicKey) -> str:
    """sha256 (hex) of the raw 32-byte public key."""
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def signed_part(state: DesiredState) -> dict[str, Any]:
    """The part that is signed. Without a window or rollbacks it is what it was before
    those fields existed, so older agents read it unchanged."""
    left_out = set()
    if state.window is None:
        left_out.add("window")
    if not state.rollbacks:
        left_out.add("rollbacks")
    return state.model_dump(mode="json", exclude=left_out or None)


def sign_desired(state: DesiredState, private_key: Ed25519PrivateKey) -> SignedDesired:
    signed = signed_part(state)
    return SignedDesired(
        signed=signed,
        key_id=key_id(private_key.public_key()),
        signature=base64.b64encode(private_key.sign(canonical_json(signed))).decode(),
    )


def verify_desired(
    signed: SignedDesired,
    trusted_public_keys: Mapping[str, Ed25519PublicKey],
    *,
    device_id: str,
    now: datetime,
    last_sequence: int,
) -> DesiredState:
    """The desired state in `signed`, or a DesiredStateRefused saying why not.

    `last_sequence` is the sequence of the last desired state this device accepted (0 for
    none). A retained message seen again after a reconnect carries that same sequence and
    is refused as Replayed; its `sequence == last_sequence` tells it from a rollback attempt.
    """
    if now.utcoffset() is None:
        raise ValueError("now must carry a time zone")
    public_key = trusted_public_keys.get(signed.key_id)
    if public_key is None:
        raise UnknownKey(f"desired state is signed by key {signed.key_id}, which is not trusted")
    try:
        signature = base64.b64decode(signed.signature, validate=True)
        public_key.verify(signature, canonical_json(signed.signed))
    # ValueError: not base64, or a signed part without a canonical form (NaN).
    except (ValueError, InvalidSignature):
        raise BadSignature(
            f"desired state signature does not verify with key {signed.key_id}: "
            "forged, or altered after signing"
        ) from None
    try:
        state = DesiredState.model_validate(signed.signed)
    except ValidationError as exc:
        raise MalformedDesired(f"signed desired state is not readable: {describe(exc)}") from None
    if state.device_id != device_id:
        raise WrongDevice(f"desired state is for device {state.device_id}, not {device_id}")
    if now >= state.expires:
        raise Expired(f"desired state {state.sequence} expired at {state.expires.isoformat()}")
    if state.sequence <= last_sequence:
        raise Replayed(
            f"desired state {state.sequence} is not newer than the last accepted ({last_sequence})",
            sequence=state.sequence,
            last_sequence=last_sequence,
        )
    return state
