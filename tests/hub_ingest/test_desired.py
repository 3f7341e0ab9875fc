"""Signed desired state in the hub database: assigned, published, renewed; on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from typer.testing import CliRunner

from edge_agent.protocol import DesiredState, SignedDesired, verify_desired
from edge_agent.protocol.desired import key_id
from hub.cli import app
from hub.fleet import desired, registry
from hub.fleet.identity import DeviceCA, EnrollmentTokens
from hub.fleet.models import DesiredRecord

KEY = Ed25519PrivateKey.generate()
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def listed(model: str, version: str) -> bool:
    return (model, version) in {("chat", "1.0.0"), ("chat", "1.1.0"), ("ocr", "2.0.0")}


def verified(record: DesiredRecord, now: datetime) -> DesiredState:
    signed = SignedDesired.model_validate_json(record.signed)
    trusted = {key_id(KEY.public_key()): KEY.public_key()}
    return verify_desired(signed, trusted, device_id=record.device_id, now=now, last_sequence=0)


def test_assign_signs_the_next_sequence_and_keeps_other_models(engine: Engine) -> None:
    registry.enroll(engine, "dev-1")
    (first,) = desired.assign(engine, KEY, ["dev-1"], "chat", "1.0.0", listed=listed, now=T0)
    (second,) = desired.assign(engine, KEY, ["dev-1"], "ocr", "2.0.0", listed=listed, now=T0)
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.models == {"chat": "1.0.0", "ocr": "2.0.0"}
    state = verified(second, T0)
    assert state.sequence == 2
    assert [r.device_id for r in desired.pending(engine)] == ["dev-1"]
    desired.mark_published(engine, "dev-1", 1)  # an older sequence: still pending
    assert desired.pending(engine) != []
    desired.mark_published(engine, "dev-1", 2)
    assert desired.pending(engine) == []


def test_unlisted_release_unknown_or_revoked_device_change_nothing(engine: Engine) -> None:
    registry.enroll(engine, "dev-1")
    registry.enroll(engine, "dev-2")
    registry.mark_revoked(engine, "dev-2")
    with pytest.raises(desired.NotListed, match="not a published release"):
        desired.assign(engine, KEY, ["dev-1"], "chat", "9.9.9", listed=listed)
    with pytest.raises(registry.RegistryError, match="device dev-2 is revoked"):
        desired.assign(engine, KEY, ["dev-1", "dev-2"], "chat", "1.0.0", listed=listed)
    with pytest.raises(registry.RegistryError, match="no device 'dev-9'"):
        desired.assign(engine, KEY, ["dev-9"], "chat", "1.0.0", listed=listed)
    assert desired.pending(engine) == []  # one transaction: dev-1 got nothing either


def test_states_are_re_signed_before_they_expire(engine: Engine) -> None:
    registry.enroll(engine, "dev-1")
    ttl = timedelta(days=30)
    desired.assign(engine, KEY, ["dev-1"], "chat", "1.1.0", listed=listed, ttl=ttl, now=T0)
    desired.mark_published(engine, "dev-1", 1)
    assert desired.renew_expiring(engine, KEY, ttl=ttl, now=T0 + timedelta(days=14)) == []
    later = T0 + timedelta(days=16)
    assert desired.renew_expiring(engine, KEY, ttl=ttl, now=later) == ["dev-1"]
    (renewed,) = desired.pending(engine)  # published again
    assert (renewed.sequence, renewed.models) == (2, {"chat": "1.1.0"})
    assert renewed.expires == later + ttl
    assert verified(renewed, later + timedelta(days=20)).sequence == 2


def test_revoking_a_device_that_never_enrolled(
    engine: Engine, database_url: str, tmp_path: Path
) -> None:
    # Its token was made, never used: revocation voids it, and no certificate exists to list.
    env = {
        "EDGE_HUB__DATABASE__URL": database_url,
        "EDGE_HUB__BROKER__IDENTITY_DIR": str(tmp_path / "identity"),
        "EDGE_HUB__ARTIFACTS__TOKENS_FILE": str(tmp_path / "device-tokens.json"),
    }
    runner = CliRunner()
    made = runner.invoke(app, ["device", "enroll", "dev-3"], env=env)
    assert made.exit_code == 0, made.output
    tokens = EnrollmentTokens(tmp_path / "identity" / "tokens.json")
    assert tokens.pending() == ["dev-3"]
    revoked = runner.invoke(app, ["device", "revoke", "dev-3"], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert "0 certificate(s)" in revoked.output and "1 unused enrollment token(s)" in revoked.output
    assert tokens.pending() == []
    assert registry.get_device(engine, "dev-3").revoked_at is not None
    assert DeviceCA(tmp_path / "identity").issued_to("dev-3") == 0
    unknown = runner.invoke(app, ["device", "revoke", "nobody"], env=env)
    assert unknown.exit_code == 1 and "no device 'nobody'" in unknown.output


def test_concurrent_writers_never_sign_the_same_sequence(engine: Engine) -> None:
    # The CLI's assign, the hub's renewal and another assign can run at once (other
    # processes, other connections): each reads the sequence and signs the next one. A
    # device refuses a repeated sequence as a replay, so every write must get its own.
    registry.enroll(engine, "dev-1")
    desired.assign(engine, KEY, ["dev-1"], "chat", "1.0.0", listed=listed, now=T0)
    writers, rounds = 6, 8
    signed: list[int] = []
    renewals: list[str] = []
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def write(index: int) -> None:
        try:
            start.wait()
            for step in range(rounds):
                if (index + step) % 3 == 0:  # renew everything: half its life has passed
                    renewals.extend(
                        desired.renew_expiring(engine, KEY, now=T0 + timedelta(days=365))
                    )
                else:
                    version = "1.1.0" if step % 2 else "1.0.0"
                    records = desired.assign(
                        engine, KEY, ["dev-1"], "chat", version, listed=listed, now=T0
                    )
                    signed.extend(record.sequence for record in records)
        except BaseException as exc:  # reported below, with the thread's own traceback
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(signed) == len(set(signed)), sorted(signed)
    final = desired.pending(engine)[0].sequence
    assert final == 1 + len(signed) + len(renewals)
