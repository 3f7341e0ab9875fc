"""Enrollment trusts only the hub the token names, and writes nothing it has not verified.

Each attack is performed for real: the hub's own server software runs twice on loopback
over HTTPS, once as the real hub and once as a fake hub (its own CA, TUF root and director
key); devices enroll through the agent's real code with real HTTP clients, and the proof is
what the fake hub received and what lies on the device's disk afterwards.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol import METADATA_DIR
from edge_agent.protocol.enrollment import ENROLL_PATH, MAX_ENROLL_BYTES
from edge_agent.sync.identity import EnrollmentFailed, Identity, key_pem, new_key
from edge_agent.updates.errors import DownloadFailed
from edge_agent.updates.fetchers import fetcher_for
from edge_agent.updates.source import ReleaseSource
from tests.sync.hubs import HttpsServer, Hub, snapshot


@pytest.fixture
def real(tmp_path: Path) -> Iterator[tuple[Hub, HttpsServer]]:
    hub = Hub(tmp_path / "real-hub")
    with hub.serve() as server:
        yield hub, server


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[Hub, HttpsServer]]:
    hub = Hub(tmp_path / "fake-hub")
    with hub.serve() as server:
        yield hub, server


class Device:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.identity = Identity(data / "identity")
        self.trust = data / "trust"

    def enroll(self, url: str, token: str, device_id: str = "dev-1") -> None:
        self.identity.enroll(url, device_id, token, self.trust)

    def disk(self) -> dict[str, bytes | str]:
        return snapshot(self.data)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    data = tmp_path / "device"
    data.mkdir()
    return Device(data)


def test_a_device_enrolls_with_the_hub_its_token_names(
    real: tuple[Hub, HttpsServer], device: Device
) -> None:
    hub, server = real
    device.enroll(server.url, hub.token("dev-1"))
    enrolled = device.identity.enrollment()
    assert enrolled is not None and enrolled.hub_url == server.url
    assert device.identity.folder.is_symlink()  # the whole set came in one swap
    assert (device.trust / "root.json").read_bytes() == hub.repo.trusted_root_path().read_bytes()
    assert device.identity.tls.ca_file is not None
    assert device.identity.tls.ca_file.read_bytes() == hub.ca.ca_cert_path.read_bytes()
    # Its updates come over the same pinned TLS: the hub CA alone, the download token.
    base, fetcher = fetcher_for(
        server.url, enrolled.download_token, ca_file=device.identity.tls.ca_file
    )
    with ReleaseSource(base, device.trust, fetcher) as releases:
        assert releases.index().models == {}
    # Without the pinned CA (the system's roots) the hub's certificate is not believed.
    base, fetcher = fetcher_for(server.url, enrolled.download_token)
    with (
        pytest.raises(DownloadFailed, match="Failed to download"),
        ReleaseSource(base, device.trust, fetcher) as releases,
    ):
        releases.index()


def test_a_fresh_device_refuses_a_fake_hub_and_writes_nothing(
    real: tuple[Hub, HttpsServer], fake: tuple[Hub, HttpsServer], device: Device
) -> None:
    real_hub, _real_server = real
    _fake_hub, fake_server = fake
    before = device.disk()
    with pytest.raises(EnrollmentFailed, match="not the hub that made the token"):
        device.enroll(fake_server.url, real_hub.token("dev-1"))
    assert fake_server.posts == []  # it never saw the CSR or the token
    assert device.disk() == before == {}


def test_a_wrong_fingerprint_is_refused_before_any_csr(
    fake: tuple[Hub, HttpsServer], device: Device
) -> None:
    fake_hub, fake_server = fake
    token = fake_hub.token("dev-1")
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")  # one digit of the CA hash
    with pytest.raises(EnrollmentFailed, match="presents CA"):
        device.enroll(fake_server.url, flipped)
    assert ("GET", "/v1/hub-ca") in fake_server.recorder.seen
    assert fake_server.posts == []
    assert device.disk() == {}


def test_an_enrolled_device_keeps_everything_against_a_fake_hub(
    real: tuple[Hub, HttpsServer], fake: tuple[Hub, HttpsServer], device: Device
) -> None:
    """The operator was tricked into the fake hub's own token: its TLS checks out, but its
    TUF root is not the one the device trusts. identity/ and trust/ stay byte for byte."""
    real_hub, real_server = real
    fake_hub, fake_server = fake
    device.enroll(real_server.url, real_hub.token("dev-1"))
    before = device.disk()
    with pytest.raises(EnrollmentFailed, match="another fleet"):
        device.enroll(fake_server.url, fake_hub.token("dev-1"))
    assert fake_server.posts == [ENROLL_PATH]  # the attack went all the way
    assert device.disk() == before  # no rogue hub_url, broker, token, CA or director key


def _successor_root(trusted: Path, signers: list[CryptoSigner]) -> bytes:
    """Version 2 of the trusted root, whose root keys are now `signers`, signed by them."""
    root = Metadata[Root].from_bytes(trusted.read_bytes())
    root.signed.version += 1
    for keyid in list(root.signed.roles[Root.type].keyids):
        root.signed.revoke_key(keyid, Root.type)
    for signer in signers:
        root.signed.add_key(signer.public_key, Root.type)
    root.signatures.clear()
    for signer in signers:
        root.sign(signer, append=True)
    return root.to_bytes()


def test_a_root_not_signed_by_the_trusted_threshold_is_refused(
    real: tuple[Hub, HttpsServer], fake: tuple[Hub, HttpsServer], device: Device
) -> None:
    """The fake hub serves the device's own root as v1 and a v2 signed by its own keys."""
    real_hub, real_server = real
    fake_hub, fake_server = fake
    device.enroll(real_server.url, real_hub.token("dev-1"))
    metadata = fake_hub.repo.root / METADATA_DIR
    real_first = real_hub.repo.trusted_root_path()
    (metadata / "1.root.json").write_bytes(real_first.read_bytes())
    (metadata / "2.root.json").write_bytes(
        _successor_root(real_first, [CryptoSigner.generate_ed25519()])
    )
    before = device.disk()
    with pytest.raises(EnrollmentFailed, match="not signed by the threshold of the root"):
        device.enroll(fake_server.url, fake_hub.token("dev-1"))
    assert device.disk() == before


def test_a_root_rotated_by_the_trusted_keys_is_accepted(
    real: tuple[Hub, HttpsServer], device: Device
) -> None:
    """The control: the real hub rotates a key (root v2 signed by the v1 root keys); an
    enrolled device enrolls again and keeps its root (ngclient walks to v2 itself)."""
    hub, server = real
    device.enroll(server.url, hub.token("dev-1"))
    pinned = (device.trust / "root.json").read_bytes()
    hub.repo.rotate_online_key("timestamp")
    assert (hub.repo.root / METADATA_DIR / "2.root.json").exists()
    device.enroll(server.url, hub.token("dev-1"))
    assert (device.trust / "root.json").read_bytes() == pinned


def test_plain_http_is_refused(real: tuple[Hub, HttpsServer], device: Device) -> None:
    hub, server = real
    with pytest.raises(EnrollmentFailed, match="needs the hub's https:// address"):
        device.enroll(server.url.replace("https://", "http://"), hub.token("dev-1"))
    assert device.disk() == {}


def test_a_device_of_the_older_layout_keeps_its_key(
    real: tuple[Hub, HttpsServer], device: Device
) -> None:
    """identity/ as a plain folder (before the swap layout): enrolling again keeps the key,
    makes identity/ a symlink to the new set, and leaves no old folder behind."""
    hub, server = real
    folder = device.identity.folder
    folder.mkdir(mode=0o700)
    key = key_pem(new_key())
    (folder / "device.key").write_bytes(key)
    device.enroll(server.url, hub.token("dev-1"))
    assert folder.is_symlink()
    assert (folder / "device.key").read_bytes() == key
    assert (folder / "device.key").stat().st_mode & 0o777 == 0o600
    assert (folder / "enrollment.json").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in device.data.iterdir()) == [
        folder.resolve().name,
        "identity",
        "trust",
    ]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{" + b" " * (MAX_ENROLL_BYTES + 1), 413, "at most"),
        (b"not json", 400, "not an enrollment request"),
        (b'{"device_id": "dev-1"}', 400, "token: Field required"),
    ],
)
def test_a_hostile_enrollment_body_is_refused_and_enrolls_nothing(
    real: tuple[Hub, HttpsServer], body: bytes, status: int, says: str
) -> None:
    hub, server = real
    hub.token("dev-1")
    with httpx.Client(verify=ssl.create_default_context(cafile=hub.ca.ca_cert_path)) as http:
        answer = http.post(server.url + ENROLL_PATH, content=body)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["error"]["message"]
    assert hub.ca.issued_to("dev-1") == 0
    assert hub.tokens.pending() == ["dev-1"]  # the token is still unused
