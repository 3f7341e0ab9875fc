"""The device CA: CSR checks, revocation list, enrollment tokens. Pure, no broker."""

from __future__ import annotations

import datetime as dt
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.protocol.topics import HUB_USERNAME
from hub.fleet.identity import (
    CsrRejected,
    DeviceCA,
    EnrollmentRefused,
    EnrollmentTokens,
    IdentityError,
    enroll,
    make_csr,
    new_key,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DeviceCA:
    return DeviceCA(tmp_path_factory.mktemp("identity") / "ca")


def test_ca_folder_keeps_keys_private_and_reloads(ca: DeviceCA) -> None:
    for key in (ca.ca_key_path, ca.server_key_path):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.folder.stat().st_mode) == 0o700
    again = DeviceCA(ca.folder)
    assert again.certificate == ca.certificate


def test_server_certificate_names_loopback(ca: DeviceCA) -> None:
    cert = x509.load_pem_x509_certificate(ca.server_cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    cert.verify_directly_issued_by(ca.certificate)


def test_device_certificate_carries_the_device_id(ca: DeviceCA) -> None:
    key = new_key()
    pem = ca.issue_device_certificate(make_csr(key, "dev-1"), "dev-1")
    cert = x509.load_pem_x509_certificate(pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-1"
    assert cert.public_key() == key.public_key()
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(ca.certificate)


def _tampered_csr() -> bytes:
    csr = x509.load_pem_x509_csr(make_csr(new_key(), "dev-1"))
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    at = bytes(der).index(b"dev-1")
    der[at : at + 5] = b"dev-2"  # same length: still parses, the signature no longer fits
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _multi_name_csr() -> bytes:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "dev-1"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(name)
    return builder.sign(new_key(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _ed25519_csr() -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-1")])
    )
    return builder.sign(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(
        serialization.Encoding.PEM
    )


@pytest.mark.parametrize(
    ("csr", "device_id", "message"),
    [
        (lambda: make_csr(new_key(), "dev-2"), "dev-1", "names 'dev-2', not the device 'dev-1'"),
        (_tampered_csr, "dev-2", "signature does not match"),
        (lambda: b"not a csr", "dev-1", "not a PEM certificate signing request"),
        (lambda: b"x" * 20_000, "dev-1", "over"),
        (_multi_name_csr, "dev-1", "exactly one CN"),
        (_ed25519_csr, "dev-1", "ECDSA P-256"),
        (lambda: make_csr(new_key(), HUB_USERNAME), HUB_USERNAME, "not a valid device id"),
        (lambda: make_csr(new_key(), "a/#"), "a/#", "not a valid device id"),
    ],
    ids=[
        "wrong-cn",
        "bad-signature",
        "garbage",
        "oversized",
        "extra-rdn",
        "ed25519",
        "hub",
        "wild",
    ],
)
def test_bad_csr_refused(ca: DeviceCA, csr: object, device_id: str, message: str) -> None:
    assert callable(csr)
    before = ca.issued_path.read_bytes() if ca.issued_path.exists() else b""
    with pytest.raises(CsrRejected, match=message):
        ca.issue_device_certificate(csr(), device_id)
    assert (ca.issued_path.read_bytes() if ca.issued_path.exists() else b"") == before


def test_revocation_rewrites_the_crl(tmp_path: Path) -> None:
    ca = DeviceCA(tmp_path / "ca")
    empty = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert len(empty) == 0 and empty.is_signature_valid(ca.certificate.public_key())
    pems = [ca.issue_device_certificate(make_csr(new_key(), "dev-r"), "dev-r") for _ in range(2)]
    keep = ca.issue_device_certificate(make_csr(new_key(), "dev-k"), "dev-k")
    assert not ca.is_revoked("dev-r")
    assert ca.revoke("dev-r") == 2
    assert ca.revoke("dev-r") == 0  # idempotent
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())
    serials = {x509.load_pem_x509_certificate(p).serial_number for p in pems}
    assert {entry.serial_number for entry in crl} == serials
    assert (
        crl.get_revoked_certificate_by_serial_number(
            x509.load_pem_x509_certificate(keep).serial_number
        )
        is None
    )
    assert ca.is_revoked("dev-r") and not ca.is_revoked("dev-k")
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    # A restart of the CA keeps the list.
    assert len(x509.load_pem_x509_crl(DeviceCA(ca.folder).crl_path.read_bytes())) == 2
    with pytest.raises(IdentityError, match="no certificate was issued to 'nobody'"):
        ca.revoke("nobody")


def test_enroll_consumes_the_token_once(ca: DeviceCA, tmp_path: Path) -> None:
    tokens = EnrollmentTokens(tmp_path / "tokens.json")
    token = tokens.create("dev-e")
    assert token not in tokens.path.read_text()  # only its hash is stored
    assert stat.S_IMODE(tokens.path.stat().st_mode) == 0o600
    assert tokens.pending() == ["dev-e"]
    key = new_key()
    cert = x509.load_pem_x509_certificate(enroll(ca, tokens, token, make_csr(key, "dev-e")))
    assert cert.public_key() == key.public_key()
    assert tokens.pending() == []
    with pytest.raises(EnrollmentRefused, match="unknown or already used"):
        enroll(ca, tokens, token, make_csr(new_key(), "dev-e"))


def test_bad_csr_leaves_the_token_usable(ca: DeviceCA, tmp_path: Path) -> None:
    tokens = EnrollmentTokens(tmp_path / "tokens.json")
    token = tokens.create("dev-f")
    with pytest.raises(CsrRejected, match="names 'dev-g'"):
        enroll(ca, tokens, token, make_csr(new_key(), "dev-g"))  # a token is for one device
    assert tokens.pending() == ["dev-f"]
    enroll(ca, tokens, token, make_csr(new_key(), "dev-f"))


def test_expired_token_refused(ca: DeviceCA, tmp_path: Path) -> None:
    tokens = EnrollmentTokens(tmp_path / "tokens.json")
    token = tokens.create("dev-x", ttl=dt.timedelta(milliseconds=20))
    time.sleep(0.05)
    with pytest.raises(EnrollmentRefused, match="expired"):
        enroll(ca, tokens, token, make_csr(new_key(), "dev-x"))
    with pytest.raises(EnrollmentRefused, match="unknown"):
        enroll(ca, tokens, "made-up", make_csr(new_key(), "dev-x"))


@pytest.mark.parametrize(
    ("device_id", "ttl", "message"),
    [("a/b", dt.timedelta(hours=1), "not a valid device id"), ("ok", dt.timedelta(0), "positive")],
)
def test_bad_token_requests(
    tmp_path: Path, device_id: str, ttl: dt.timedelta, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        EnrollmentTokens(tmp_path / "t.json").create(device_id, ttl=ttl)


def test_corrupt_ca_key_is_a_clear_error(tmp_path: Path) -> None:
    ca = DeviceCA(tmp_path / "ca")
    ca.ca_key_path.write_bytes(b"garbage")
    with pytest.raises(IdentityError, match="cannot be loaded"):
        DeviceCA(ca.folder)
    other = ec.generate_private_key(ec.SECP256R1())
    ca.ca_key_path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(IdentityError, match="is not the key of"):
        DeviceCA(ca.folder)


def test_cancel_voids_only_that_devices_tokens(tmp_path: Path) -> None:
    tokens = EnrollmentTokens(tmp_path / "tokens.json")
    tokens.create("dev-a")
    tokens.create("dev-a")
    kept = tokens.create("dev-b")
    assert tokens.cancel("dev-a") == 2 and tokens.cancel("dev-a") == 0
    assert tokens.pending() == ["dev-b"]
    with tokens.redeem(kept) as device_id:
        assert device_id == "dev-b"
