"""The device CA's root made at the ceremony: the hub's CA is its intermediate, the root key
never reaches the hub, and a chain from any other root is refused at install.

Through the real `edge-provision device-ca` commands; the result is proved by a real TLS
handshake on loopback (a device certificate from the hub's CA against the hub's server
certificate, each side trusting only the hub's ca.crt), and the hub folder is read for keys.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.sync.identity import key_pem, make_csr, new_key
from hub.fleet.identity import DeviceCA
from provisioning.ceremony import private_key_files
from provisioning.device_ca import ROOT_CERT_FILE

PROVISION = str(Path(sys.executable).parent / "edge-provision")


def provision(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROVISION, *args], capture_output=True, text=True, timeout=60)


def ceremony_with_root(folder: Path, tmp: Path, name: str) -> str:
    passfile = tmp / f"{name}-pass"
    passfile.write_text("device root passphrase\n")
    done = provision(
        "device-ca", "init", "--ceremony", str(folder), "--passphrase-file", str(passfile)
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[3]  # "device root CA sha256:..."


def sign(folder: Path, tmp: Path, name: str, csr: Path, out: Path) -> None:
    done = provision(
        "device-ca", "sign", str(csr), "--ceremony", str(folder), "--out", str(out),
        "--passphrase-file", str(tmp / f"{name}-pass"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def handshake(ca: DeviceCA, tmp: Path) -> str:
    """A device with a certificate from the hub's CA talks TLS to the hub's server
    certificate; both sides trust the hub's ca.crt file alone. The device's name as the
    server saw it."""
    device_key = new_key()
    (tmp / "device.key").write_bytes(key_pem(device_key))
    cert = ca.issue_device_certificate(make_csr(device_key, "ward-7-ws-1"), "ward-7-ws-1")
    (tmp / "device.crt").write_bytes(cert)
    files = ca.server_files
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(files.cert, files.key)
    server.load_verify_locations(cafile=files.ca)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=files.ca)
    client.load_cert_chain(tmp / "device.crt", tmp / "device.key")
    seen: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            conn, _ = listener.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
                seen.append(str(peer.subject.rfc4514_string()))
                tls.sendall(b"ok")

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.recv(2) == b"ok"
        thread.join(timeout=10)
    return seen[0]


def test_the_hub_ca_is_signed_offline_and_the_root_key_stays_there(tmp_path: Path) -> None:
    ceremony, identity = tmp_path / "ceremony", tmp_path / "hub" / "identity"
    fingerprint = ceremony_with_root(ceremony, tmp_path, "fleet")
    done = provision("device-ca", "request", "--identity", str(identity))
    assert done.returncode == 0, done.stderr
    sign(ceremony, tmp_path, "fleet", identity / "ca.csr", tmp_path / "chain.pem")
    done = provision(
        "device-ca", "install", str(tmp_path / "chain.pem"), "--identity", str(identity),
        "--root-fingerprint", fingerprint,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    ca = DeviceCA(identity)
    root = x509.load_pem_x509_certificate((ceremony / ROOT_CERT_FILE).read_bytes())
    assert ca.certificate.issuer == root.subject  # the hub's CA is the root's intermediate
    assert handshake(ca, tmp_path) == "CN=ward-7-ws-1"
    root_public = root.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path in private_key_files(tmp_path / "hub"):
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        assert public != root_public, f"{path} holds the device root CA's key"


def test_a_chain_from_another_root_is_refused(tmp_path: Path) -> None:
    """An attacker's own ceremony signs the hub's request: install refuses it by the root's
    fingerprint, and the hub has no CA afterwards (it does not start with one)."""
    ceremony, rogue, identity = tmp_path / "ceremony", tmp_path / "rogue", tmp_path / "identity"
    fingerprint = ceremony_with_root(ceremony, tmp_path, "fleet")
    ceremony_with_root(rogue, tmp_path, "rogue")
    assert provision("device-ca", "request", "--identity", str(identity)).returncode == 0
    sign(rogue, tmp_path, "rogue", identity / "ca.csr", tmp_path / "rogue-chain.pem")
    done = provision(
        "device-ca", "install", str(tmp_path / "rogue-chain.pem"), "--identity", str(identity),
        "--root-fingerprint", fingerprint,
    )  # fmt: skip
    assert done.returncode == 1
    assert "not signed at this fleet's ceremony" in done.stderr
    assert not (identity / "ca.crt").exists()


def test_a_chain_for_another_key_is_refused(tmp_path: Path) -> None:
    """A chain signed by the fleet's root, but for another hub's CA key."""
    ceremony, identity, other = tmp_path / "ceremony", tmp_path / "identity", tmp_path / "other"
    fingerprint = ceremony_with_root(ceremony, tmp_path, "fleet")
    assert provision("device-ca", "request", "--identity", str(identity)).returncode == 0
    assert provision("device-ca", "request", "--identity", str(other)).returncode == 0
    sign(ceremony, tmp_path, "fleet", other / "ca.csr", tmp_path / "other-chain.pem")
    done = provision(
        "device-ca", "install", str(tmp_path / "other-chain.pem"), "--identity", str(identity),
        "--root-fingerprint", fingerprint,
    )  # fmt: skip
    assert done.returncode == 1 and "not for this hub's CA key" in done.stderr
    assert not (identity / "ca.crt").exists()
