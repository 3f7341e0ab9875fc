"""An adapter release on a device: installed only next to the base it names, moving only
the adapter's bytes; refused, with what to install, when that base is missing or another
version; a tampered adapter is refused by effect (nothing activated, nothing served)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.models import installed_adapters
from edge_agent.protocol import chunk_path
from edge_agent.store import ModelStore
from edge_agent.updates.errors import Refused, RepositoryError
from edge_agent.updates.fetchers import fetcher_for
from edge_agent.updates.manager import Outcome, UpdateManager
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.registry.adapter_import import import_adapter
from hub.registry.repository import ReleaseRepository
from tests.updates.conftest import file_hashes


class Device:
    def __init__(self, repo: ReleaseRepository, root: Path) -> None:
        self.repo = repo
        self.root = root
        pin_root(root / "trust", repo.trusted_root_path())

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.root)

    def update(self, model: str, version: str | None = None) -> Outcome:
        base, fetcher = fetcher_for(str(self.repo.root))
        with ReleaseSource(base, self.root / "trust", fetcher) as source:
            manager = UpdateManager(self.store, self.root / "update-state.json")
            return manager.update(source, model, version)

    def files(self) -> dict[str, str]:
        """Every file the store holds, but the verified metadata and the update record."""
        return {
            path: digest
            for path, digest in file_hashes(self.root).items()
            if not path.startswith("trust/") and path != "update-state.json"
        }


@pytest.fixture(scope="module")
def repo(
    tiny_lora_base_dir: Path,
    peft_adapters: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> ReleaseRepository:
    tmp = tmp_path_factory.mktemp("adapter-repo")
    repo = ReleaseRepository.create(tmp / "repo", tmp / "keys")
    repo.publish(tiny_lora_base_dir, "tiny", "1.0.0")
    repo.publish(tiny_lora_base_dir, "tiny", "1.1.0")
    import_adapter(repo, peft_adapters["contracts-fr"], "tiny@1.0.0", "contracts-fr", "1.0.0")
    return repo


def test_an_adapter_installs_next_to_its_base_moving_only_its_own_bytes(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    device = Device(repo, tmp_path / "device")
    base = device.update("tiny", "1.0.0")
    adapter = device.update("contracts-fr")  # health check: generates with it on the base
    assert (adapter.version, adapter.changed) == ("1.0.0", True)
    manifest = repo.manifest("contracts-fr", "1.0.0")
    assert adapter.fetched_bytes == sum(manifest.unique_chunks().values())
    assert adapter.fetched_bytes < base.fetched_bytes / 5
    (ref,) = installed_adapters(device.store.models_dir).values()
    assert (ref.name, ref.base) == ("contracts-fr", "tiny@1.0.0")


def test_an_adapter_whose_base_is_missing_is_refused_before_any_byte_moves(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    device = Device(repo, tmp_path / "device")
    with pytest.raises(Refused) as caught:
        device.update("contracts-fr")
    assert str(caught.value) == (
        "contracts-fr 1.0.0 is a LoRA adapter for tiny 1.0.0, and tiny is not installed here: "
        "install tiny 1.0.0 first (edge-agent update tiny --version 1.0.0, or import it "
        "from a stick), then this adapter"
    )
    assert device.files() == {}


def test_an_adapter_for_another_version_of_its_base_is_refused(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    device = Device(repo, tmp_path / "device")
    device.update("tiny", "1.1.0")
    before = device.files()
    with pytest.raises(Refused, match=re.escape("tiny 1.0.0, and tiny 1.1.0 is active here")):
        device.update("contracts-fr")
    assert device.files() == before


def test_a_tampered_adapter_is_refused_and_nothing_is_activated(
    repo: ReleaseRepository, tmp_path: Path
) -> None:
    device = Device(repo, tmp_path / "device")
    device.update("tiny", "1.0.0")
    before = device.files()
    manifest = repo.manifest("contracts-fr", "1.0.0")
    weights = next(f for f in manifest.files if f.path.endswith(".onnx_adapter"))
    chunk = repo.root / chunk_path(weights.chunks[-1].sha256)
    honest = chunk.read_bytes()
    chunk.write_bytes(honest[:-1] + bytes([honest[-1] ^ 1]))  # same length, one bit off
    try:
        with pytest.raises(RepositoryError, match="does not match the signed manifest"):
            device.update("contracts-fr")
    finally:
        chunk.write_bytes(honest)
    store = device.store
    assert store.active("contracts-fr") is None and store.versions("contracts-fr") == []
    assert installed_adapters(store.models_dir) == {}
    assert {p for p in device.files() if not p.startswith("chunks/")} == {
        p for p in before if not p.startswith("chunks/")
    }
