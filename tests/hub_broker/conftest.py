"""The hub's managed Mosquitto on a free loopback port, with a fresh device CA; the whole
serving hub (`hub`) for tests of what runs beside it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from hub import db
from hub.broker import BrokerMissing, ManagedMosquitto
from hub.config import ArtifactsConfig, BrokerConfig, DatabaseConfig, HubConfig, RepositoryConfig
from hub.fleet.identity import DeviceCA, TlsFiles, key_pem, make_csr, new_key
from hub.registry.repository import ReleaseRepository
from hub.service import HubService
from tests.mqtt_broker import Endpoint, TestClient
from tests.ports import free_port

DEVICE_GROUPS = {"dev-a": ["lab"], "dev-b": ["lab"]}


def serving_hub(tmp_path: Path) -> Iterator[HubService]:
    """The hub as `edge-hub serve` runs it (managed Mosquitto, ingest, director), on SQLite."""
    config = HubConfig(
        repository=RepositoryConfig(dir=tmp_path / "repository"),
        artifacts=ArtifactsConfig(tokens_file=tmp_path / "tokens.json"),
        database=DatabaseConfig(url=db.sqlite_url(tmp_path / "hub.sqlite3")),
        broker=BrokerConfig(
            port=free_port(), data_dir=tmp_path / "broker", identity_dir=tmp_path / "identity"
        ),
    )
    repository = ReleaseRepository.create(config.repository_dir, config.keys_dir)
    service = HubService(config, repository)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[HubService]:
    yield from serving_hub(tmp_path)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DeviceCA:
    return DeviceCA(tmp_path_factory.mktemp("identity") / "ca")


@pytest.fixture
def broker(tmp_path: Path, ca: DeviceCA) -> Iterator[ManagedMosquitto]:
    try:
        managed = ManagedMosquitto(
            tmp_path / "broker", ca, port=free_port(), device_groups=DEVICE_GROUPS
        )
    except BrokerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with managed:
        yield managed


def device_files(
    ca: DeviceCA, folder: Path, device_id: str, key: ec.EllipticCurvePrivateKey | None = None
) -> TlsFiles:
    """What a device holds after enrolling: its own key, the certificate the hub issued."""
    key = key or new_key()
    cert = ca.issue_device_certificate(make_csr(key, device_id), device_id)
    return save_files(ca, folder, device_id, key, cert)


def save_files(
    ca: DeviceCA, folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: bytes
) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.key").write_bytes(key_pem(key))
    (folder / f"{name}.crt").write_bytes(cert)
    return TlsFiles(ca.ca_cert_path, folder / f"{name}.crt", folder / f"{name}.key")


def tls_client(
    broker: Endpoint, client_id: str, files: TlsFiles, *, persistent: bool = False
) -> TestClient:
    """A TLS client; `persistent`: a session that outlives the connection and a restart, so
    a reconnect would get its subscriptions and queued messages back."""
    return TestClient(
        broker,
        client_id,
        ca_file=files.ca,
        cert_file=files.cert,
        key_file=files.key,
        clean_start=not persistent,
        session_expiry_s=3600 if persistent else 0,
    )
