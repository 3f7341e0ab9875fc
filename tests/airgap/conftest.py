"""An air-gapped site for real: a key ceremony, a hub repository built on its root, a USB
bundle written by the hub's code, and a device that imports it (no mocks)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from edge_agent.protocol.bundle import BundleRelease
from edge_agent.store import ModelStore
from edge_agent.updates.manager import UpdateManager
from edge_agent.updates.offline import ImportReport, import_bundle
from edge_agent.updates.source import pin_root
from hub.registry.repository import ReleaseRepository
from provisioning.ceremony import RootResult, bundle_signer, init_root
from provisioning.usb_export import ExportSummary, export_bundle
from tests.needs import need
from tests.updates.conftest import file_hashes

UNSHARE = shutil.which("unshare")


@pytest.fixture
def network_namespace() -> None:
    """The device's commands run cut off from every network (`unshare -n`)."""
    works = UNSHARE is not None and subprocess.run([UNSHARE, "-n", "true"]).returncode == 0
    need(works, "needs `unshare -n` (root, network namespaces) to cut the device off")


ROOT_PASSPHRASES = [b"first holder pass", b"second holder pass", b"third holder pass"]
BUNDLE_PASSPHRASE = b"bundle role pass"
DEVICE = "ward-7-ws-1"


@dataclass
class Site:
    tmp: Path
    ceremony: Path
    hub_keys: Path
    root: RootResult
    repo: ReleaseRepository
    device: Path
    model_dir: Path

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.device)

    def manager(self) -> UpdateManager:
        return UpdateManager(self.store, self.device / "update-state.json")

    def bundle_key(self) -> Path:
        return next(self.ceremony.glob("offline-bundle-*.pem"))

    def export(
        self,
        stick: Path,
        versions: tuple[str, ...] = ("1.0.0",),
        devices: tuple[str, ...] = (DEVICE,),
        *,
        now: datetime | None = None,
        held: dict[str, list[tuple[str, str]]] | None = None,
        validity: timedelta = timedelta(days=30),
    ) -> ExportSummary:
        root = Metadata[Root].from_file(str(self.repo.trusted_root_path())).signed
        signer = bundle_signer(self.bundle_key(), BUNDLE_PASSPHRASE, root)
        return export_bundle(
            self.repo.root,
            stick,
            releases=[BundleRelease(model="tiny", version=v) for v in versions],
            devices=list(devices),
            groups=[],
            site="ward-7",
            signers=[signer],
            held=held,
            now=now,
            validity=validity,
        )

    def import_(
        self, stick: Path, *, device_id: str = DEVICE, now: datetime | None = None, **kw: object
    ) -> ImportReport:
        return import_bundle(
            stick,
            self.manager(),
            trust_dir=self.device / "trust",
            data_dir=self.device,
            device_id=device_id,
            now=now,
            **kw,  # type: ignore[arg-type]
        )

    def active(self) -> str | None:
        active = self.store.active("tiny")
        return active.version if active else None

    def untouched(self) -> dict[str, str]:
        """Every file of the device and of the folder around it, but the device's trust
        metadata and bookkeeping: what a refused stick must leave as it was."""
        skip = ("device/trust/", "device/update-state.json", "device/offline-time.json")
        return {
            path: digest
            for path, digest in file_hashes(self.tmp).items()
            if not path.startswith(skip) and not path.startswith("stick")
        }


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def site(tiny_model_dir: Path, tmp_path: Path) -> Site:
    ceremony, hub_keys = tmp_path / "ceremony", tmp_path / "hub-keys"
    root = init_root(ceremony, hub_keys, ROOT_PASSPHRASES, 2, BUNDLE_PASSPHRASE)
    repo = ReleaseRepository.create(tmp_path / "repo", hub_keys, root_metadata=root.hub_root_file)
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    device = tmp_path / "device"
    pin_root(device / "trust", repo.trusted_root_path())
    return Site(tmp_path, ceremony, hub_keys, root, repo, device, tiny_model_dir)
