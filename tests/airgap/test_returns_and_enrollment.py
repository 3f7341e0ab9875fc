"""Attacks on the way back and on enrollment by stick, each performed for real: the hub's
database and the device's identity folder are read afterwards, not the commands' words."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.protocol import Envelope, InstallEvent, UpdateEvent
from edge_agent.protocol.bundle import export_signing_bytes
from edge_agent.protocol.messages import encode, topic_for
from edge_agent.sync.identity import make_csr
from hub.fleet.identity import issue_device_certificate, make_ca
from tests.airgap.conftest import DEVICE, UNSHARE, Site
from tests.airgap.test_round_trip import BIN, Air, pytestmark  # noqa: F401 - runs in a namespace


def enrolled(site: Site) -> tuple[Air, Path]:
    air = Air(site)
    token = air.hub("device", "enroll", DEVICE).strip().splitlines()[-1]
    stick = site.tmp / "stick"
    stick.mkdir()
    air.offline("enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token)
    air.hub("enroll-import", str(stick))
    air.offline("enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token)
    air.export(stick)
    air.offline("import", str(stick))
    air.offline("export", str(stick))
    return air, stick


def export_file(stick: Path) -> Path:
    return next((stick / "edge-returns" / "devices" / DEVICE).glob("*.json"))


def hub_import(air: Air, stick: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-hub"), "import", str(stick), "--receipts", str(air.receipts)],
        env=air.hub_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def stored(air: Air) -> list[tuple[object, ...]]:
    return air.rows("select message_id from received_messages")


def resign_with_device_key(site: Site, path: Path, signed: dict[str, object]) -> None:
    key = serialization.load_pem_private_key(
        (site.device / "identity" / "device.key").read_bytes(), password=None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    envelope = json.loads(path.read_bytes())
    envelope["signed"] = signed
    signature = key.sign(export_signing_bytes(signed), ec.ECDSA(hashes.SHA256()))
    envelope["signature"] = base64.b64encode(signature).decode()
    path.write_text(json.dumps(envelope))


def test_an_altered_export_is_refused(site: Site) -> None:
    air, stick = enrolled(site)
    path = export_file(stick)
    envelope = json.loads(path.read_bytes())
    envelope["signed"]["messages"] = envelope["signed"]["messages"][:1]  # drop a message
    path.write_text(json.dumps(envelope))
    result = hub_import(air, stick)
    assert result.returncode == 1 and "signature" in result.stdout
    assert stored(air) == []


def test_a_message_for_another_device_is_refused(site: Site) -> None:
    """The device's own key signs it, but the message claims another device's name."""
    air, stick = enrolled(site)
    path = export_file(stick)
    signed = json.loads(path.read_bytes())["signed"]
    forged = Envelope.of(
        InstallEvent(model="tiny", version="9.9.9", event=UpdateEvent.HEALTHY),
        device_id="ward-7-ws-2",
    )
    signed["messages"].append(
        {
            "message_id": forged.message_id,
            "topic": topic_for(forged),
            "payload": base64.b64encode(encode(forged)).decode(),
        }
    )
    resign_with_device_key(site, path, signed)
    result = hub_import(air, stick)
    assert result.returncode == 1 and "ward-7-ws-2" in result.stdout
    assert stored(air) == []


def test_state_smuggled_as_telemetry_is_refused(site: Site) -> None:
    air, stick = enrolled(site)
    path = export_file(stick)
    messages = json.loads(path.read_bytes())["signed"]["messages"]
    path.unlink()  # only the unsigned telemetry file remains
    folder = stick / "edge-returns" / "telemetry"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "smuggled.json").write_text(
        json.dumps({"type": "edge-telemetry-return", "messages": messages})
    )
    result = hub_import(air, stick)
    assert result.returncode == 1 and "telemetry file" in result.stdout
    assert stored(air) == []


def test_a_copied_request_with_another_key_is_refused(site: Site) -> None:
    """Someone copies the stick and swaps in a CSR of their own key: the proof binds the
    token to the device's CSR, so the hub issues nothing and the token stays usable."""
    air = Air(site)
    token = air.hub("device", "enroll", DEVICE).strip().splitlines()[-1]
    stick = site.tmp / "stick"
    stick.mkdir()
    air.offline("enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token)
    request_path = stick / "edge-enroll" / "requests" / f"{DEVICE}.json"
    request = json.loads(request_path.read_bytes())
    thief = ec.generate_private_key(ec.SECP256R1())
    request["csr_pem"] = make_csr(thief, DEVICE).decode()
    request_path.write_text(json.dumps(request))
    done = subprocess.run(
        [str(BIN / "edge-hub"), "enroll-import", str(stick)],
        env=air.hub_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "proof" in done.stderr
    assert not (stick / "edge-enroll" / "responses").exists()
    assert air.rows("select enrolled_at from devices") == [(None,)]


def test_an_answer_from_another_ca_is_refused(site: Site) -> None:
    """A stick whose answer was made by another hub (a certificate from its own CA)."""
    air = Air(site)
    token = air.hub("device", "enroll", DEVICE).strip().splitlines()[-1]
    stick = site.tmp / "stick"
    stick.mkdir()
    air.offline("enroll", "--offline", str(stick), "--device-id", DEVICE, "--token", token)
    air.hub("enroll-import", str(stick))
    response_path = stick / "edge-enroll" / "responses" / f"{DEVICE}.json"
    response = json.loads(response_path.read_bytes())
    request = json.loads((stick / "edge-enroll" / "requests" / f"{DEVICE}.json").read_bytes())
    other_key, other_ca = make_ca()
    cert = issue_device_certificate(other_key, other_ca, request["csr_pem"].encode(), DEVICE)
    response["answer"]["ca_pem"] = other_ca.public_bytes(serialization.Encoding.PEM).decode()
    response["answer"]["certificate_pem"] = cert.public_bytes(serialization.Encoding.PEM).decode()
    response_path.write_text(json.dumps(response))
    done = subprocess.run(
        [str(UNSHARE), "-n",
         str(BIN / "edge-agent"), "enroll", "--offline", str(stick), "--device-id", DEVICE,
         "--token", token],
        env=air.agent_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "not from your hub" in done.stderr
    assert not (site.device / "identity" / "device.crt").exists()
