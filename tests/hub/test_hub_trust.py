"""The hub's side of trust: download tokens only for enrolled, unrevoked devices; HTTPS
from the hub's own CA, re-issued before it expires; plain HTTP only on loopback; the
enrollment token names the CA; commands that make secrets say where they are."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from typer.testing import CliRunner

from edge_agent.sync.hubtrust import Ticket
from hub import db
from hub.cli import app
from hub.fleet import registry
from hub.fleet.https import fingerprint, https_files, tls_hosts
from hub.fleet.identity import SERVER_VALID_DAYS, DeviceCA

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    database = f"sqlite:///{tmp_path / 'hub.sqlite3'}"
    db.migrate(database)
    return {
        "EDGE_HUB__DATABASE__URL": database,
        "EDGE_HUB__ARTIFACTS__TOKENS_FILE": str(tmp_path / "device-tokens.json"),
        "EDGE_HUB__BROKER__IDENTITY_DIR": str(tmp_path / "identity"),
        "EDGE_HUB__REPOSITORY__KEYS_DIR": str(tmp_path / "keys"),
    }


def hub(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def issued_devices(env: dict[str, str]) -> set[str]:
    path = Path(env["EDGE_HUB__ARTIFACTS__TOKENS_FILE"])
    return set(json.loads(path.read_text())["devices"]) if path.exists() else set()


def test_device_token_is_refused_for_a_revoked_device(env: dict[str, str]) -> None:
    engine = db.make_engine(env["EDGE_HUB__DATABASE__URL"])
    registry.enroll(engine, "box-1")
    registry.mark_revoked(engine, "box-1")
    code, out, err = hub(env, "device", "token", "box-1")
    assert code == 1 and out == ""
    assert "box-1 was revoked" in err and "enroll it again" in err
    assert issued_devices(env) == set()  # nothing issued: the artifact server knows no token


def test_device_token_is_refused_for_an_unknown_device(env: dict[str, str]) -> None:
    code, out, err = hub(env, "device", "token", "ghost")
    assert code == 1 and out == ""
    assert "no device 'ghost'" in err and "edge-hub device enroll" in err
    assert issued_devices(env) == set()


def test_device_token_is_refused_before_enrollment_finished(env: dict[str, str]) -> None:
    registry.prepare(db.make_engine(env["EDGE_HUB__DATABASE__URL"]), "box-2")
    code, _out, err = hub(env, "device", "token", "box-2")
    assert code == 1 and "has not finished enrolling" in err
    assert issued_devices(env) == set()


def test_device_token_for_an_enrolled_device(env: dict[str, str]) -> None:
    registry.enroll(db.make_engine(env["EDGE_HUB__DATABASE__URL"]), "box-3")
    code, out, _err = hub(env, "device", "token", "box-3")
    assert code == 0 and out.strip().startswith("edt_")
    assert issued_devices(env) == {"box-3"}


def test_device_enroll_prints_a_token_bound_to_the_hub_ca(
    env: dict[str, str], tmp_path: Path
) -> None:
    code, out, err = hub(env, "device", "enroll", "box-4")
    assert code == 0, err
    ticket = Ticket.parse(out.strip())
    assert ticket.ca_fingerprint == fingerprint(DeviceCA(tmp_path / "identity"))
    assert "edge-agent enroll https://127.0.0.1:8070 --device-id box-4" in err
    assert str(tmp_path / "identity" / "ca.key") in err and "private" in err


def test_plain_http_only_on_loopback(env: dict[str, str]) -> None:
    code, _out, err = hub(env, "serve", "--insecure-http", "--host", "0.0.0.0")
    assert code == 1
    assert "plain HTTP is allowed on a loopback address only, not 0.0.0.0" in err


def test_the_https_certificate_is_made_once_and_renewed_before_expiry(tmp_path: Path) -> None:
    ca = DeviceCA(tmp_path / "identity")
    hosts = tls_hosts("127.0.0.1", ["hub.example"])
    files, made = https_files(ca, hosts)
    assert made and files.key.stat().st_mode & 0o777 == 0o600
    first = files.cert.read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    cert.verify_directly_issued_by(ca.certificate)
    assert https_files(ca, hosts) == (files, False)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=SERVER_VALID_DAYS - 10)
    assert https_files(ca, hosts, now=later)[1]  # within 30 days of expiry: made again
    assert files.cert.read_bytes() != first
    renewed = files.cert.read_bytes()
    assert https_files(ca, [*hosts, "hub2.example"])[1]  # a newly configured name
    assert https_files(ca, [*hosts, "hub2.example"], rotate=True)[1]
    assert files.cert.read_bytes() != renewed


def test_keys_rotate_https_says_where_the_secrets_are(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = hub(env, "keys", "rotate", "https")
    assert code == 0, err
    assert f"{tmp_path / 'identity' / 'https.key'} (0600) stays on the hub" in out
    assert "devices trust the CA" in out


def test_repo_init_says_what_stays_offline(env: dict[str, str], tmp_path: Path) -> None:
    code, out, err = hub(env, "repo", "init", "--repo", str(tmp_path / "repo"))
    assert code == 0, err
    assert f"root keys: {tmp_path / 'keys' / 'root-keys'}: keep OFFLINE" in out
