"""Signed desired state: accepted only when trusted, intact, addressed here, fresh and newer."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pydantic import ValidationError

from edge_agent.protocol import (
    BadSignature,
    DesiredRelease,
    DesiredState,
    DesiredStateRefused,
    Envelope,
    Expired,
    MalformedDesired,
    Replayed,
    SignedDesired,
    UnknownKey,
    WrongDevice,
    decode,
    encode,
    key_id,
    sign_desired,
    verify_desired,
)
from edge_agent.protocol.desired import canonical_json

NOW = datetime(2030, 1, 2, tzinfo=UTC)
DIRECTOR = Ed25519PrivateKey.generate()
TRUSTED = {key_id(DIRECTOR.public_key()): DIRECTOR.public_key()}


def state(**change: Any) -> DesiredState:
    fields: dict[str, Any] = {
        "device_id": "dev-1",
        "sequence": 5,
        "issued_at": NOW - timedelta(hours=1),
        "expires": NOW + timedelta(days=7),
        "models": {
            "tiny": DesiredRelease(version="1.2.0", manifest="tiny/1.2.0/manifest.json"),
        },
    }
    return DesiredState(**(fields | change))


def verify(signed: SignedDesired, **change: Any) -> DesiredState:
    args: dict[str, Any] = {"device_id": "dev-1", "now": NOW, "last_sequence": 4}
    return verify_desired(signed, TRUSTED, **(args | change))


def test_a_good_desired_state_verifies() -> None:
    assert verify(sign_desired(state(), DIRECTOR)) == state()


def test_it_verifies_after_travelling_with_unknown_fields() -> None:
    signed = sign_desired(state(rollout="wave-2"), DIRECTOR)
    envelope = Envelope.of(signed, device_id="dev-1")
    received = decode("edge/v1/devices/dev-1/desired", encode(envelope)).payload
    assert isinstance(received, SignedDesired)
    assert verify(received).model_extra == {"rollout": "wave-2"}


def test_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    public = DIRECTOR.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(public) == hashlib.sha256(raw).hexdigest()
    assert key_id(public) != key_id(Ed25519PrivateKey.generate().public_key())


def test_a_key_the_device_does_not_trust_is_refused() -> None:
    with pytest.raises(UnknownKey, match="not trusted"):
        verify(sign_desired(state(), Ed25519PrivateKey.generate()))


def test_a_forged_signature_is_refused() -> None:
    signed = sign_desired(state(), DIRECTOR)
    forged_by = Ed25519PrivateKey.generate()
    forged = forged_by.sign(b'{"device_id":"dev-1"}')
    attack = signed.model_copy(update={"signature": base64.b64encode(forged).decode()})
    with pytest.raises(BadSignature, match="forged, or altered after signing"):
        verify(attack)


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_a_broken_signature_is_refused(signature: str) -> None:
    attack = sign_desired(state(), DIRECTOR).model_copy(update={"signature": signature})
    with pytest.raises(BadSignature):
        verify(attack)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("sequence", 99),
        ("device_id", "dev-2"),
        ("expires", "2099-01-01T00:00:00Z"),
        ("models", {"tiny": {"version": "0.1.0", "manifest": "tiny/0.1.0/manifest.json"}}),
        ("added_after_signing", True),
    ],
)
def test_a_field_tampered_with_after_signing_is_refused(field: str, value: Any) -> None:
    signed = sign_desired(state(), DIRECTOR)
    attack = signed.model_copy(update={"signed": signed.signed | {field: value}})
    with pytest.raises(BadSignature):
        verify(attack)


def test_a_state_for_another_device_is_refused() -> None:
    with pytest.raises(WrongDevice, match="for device dev-2, not dev-1"):
        verify(sign_desired(state(device_id="dev-2"), DIRECTOR))


def test_an_expired_state_is_refused() -> None:
    signed = sign_desired(state(), DIRECTOR)
    with pytest.raises(Expired, match="expired at 2030-01-09"):
        verify(signed, now=NOW + timedelta(days=7))


@pytest.mark.parametrize("last_sequence", [5, 6, 100])
def test_a_replayed_or_older_state_is_refused(last_sequence: int) -> None:
    with pytest.raises(Replayed, match="not newer than the last accepted") as caught:
        verify(sign_desired(state(), DIRECTOR), last_sequence=last_sequence)
    assert (caught.value.sequence, caught.value.last_sequence) == (5, last_sequence)


def test_a_signed_but_unreadable_state_is_refused() -> None:
    signed = {**state().model_dump(mode="json"), "schema_version": 2}
    raw = SignedDesired(
        signed=signed,
        key_id=key_id(DIRECTOR.public_key()),
        signature=base64.b64encode(DIRECTOR.sign(canonical_json(signed))).decode(),
    )
    with pytest.raises(MalformedDesired, match="newer than this agent understands"):
        verify(raw)


def test_every_refusal_is_a_desired_state_refusal() -> None:
    for error in (UnknownKey, BadSignature, MalformedDesired, WrongDevice, Expired, Replayed):
        assert issubclass(error, DesiredStateRefused)


def test_a_manifest_path_that_does_not_match_the_release_is_refused() -> None:
    wrong = {"tiny": DesiredRelease(version="1.2.0", manifest="tiny/1.0.0/manifest.json")}
    with pytest.raises(ValidationError, match=r"models\.tiny\.manifest must be"):
        state(models=wrong)


def test_expiry_must_follow_issue() -> None:
    with pytest.raises(ValidationError, match="expires must be after issued_at"):
        state(expires=NOW - timedelta(days=1))


def test_now_without_a_time_zone_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="time zone"):
        verify(sign_desired(state(), DIRECTOR), now=datetime(2030, 1, 2))


def test_a_rollback_statement_is_signed_and_verified_with_the_state() -> None:
    rolled = state(rollbacks={"tiny": "1.3.0"})
    signed = sign_desired(rolled, DIRECTOR)
    assert signed.signed["rollbacks"] == {"tiny": "1.3.0"}
    assert verify(signed).rollbacks == {"tiny": "1.3.0"}
    assert "rollbacks" not in sign_desired(state(), DIRECTOR).signed  # older agents' bytes


@pytest.mark.parametrize(
    ("rollbacks", "error"),
    [
        ({"other": "2.0.0"}, r"rollbacks\.other names a model this state does not assign"),
        ({"tiny": "1.2.0"}, r"rollbacks\.tiny must name a release newer than the assigned 1\.2\.0"),
        ({"tiny": "1.0.0"}, r"rollbacks\.tiny must name a release newer than the assigned 1\.2\.0"),
    ],
)
def test_a_rollback_statement_must_name_an_assigned_model_and_a_newer_release(
    rollbacks: dict[str, str], error: str
) -> None:
    with pytest.raises(ValidationError, match=error):
        state(rollbacks=rollbacks)
