"""A real signed repository (the hub's code) and a device with the fleet's root pinned."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.store import ModelStore
from edge_agent.updates.fetchers import Fetcher, fetcher_for
from edge_agent.updates.manager import Outcome, UpdateManager
from edge_agent.updates.source import ReleaseSource, pin_root
from hub.registry.repository import ReleaseRepository


@dataclass
class Fleet:
    repo: ReleaseRepository
    device: Path
    model_dir: Path
    tmp: Path

    @property
    def store(self) -> ModelStore:
        return ModelStore(self.device)

    def manager(self) -> UpdateManager:
        return UpdateManager(self.store, self.device / "update-state.json")

    def source(self, fetcher: Fetcher | None = None) -> ReleaseSource:
        base, default = fetcher_for(str(self.repo.root))
        return ReleaseSource(base, self.device / "trust", fetcher or default)

    def update(self, version: str | None = None, fetcher: Fetcher | None = None) -> Outcome:
        with self.source(fetcher) as source:
            return self.manager().update(source, "tiny", version)

    def variant(self, name: str, **search: object) -> Path:
        """A copy of the model whose genai_config differs: a release with one new file."""
        folder = self.tmp / name
        shutil.copytree(self.model_dir, folder)
        path = folder / "genai_config.json"
        config = json.loads(path.read_text())
        config["search"].update(search)
        path.write_text(json.dumps(config, indent=4))
        return folder

    def snapshot(self) -> dict[str, object]:
        """What an attack must not change: pointers, versions, floors, every file."""
        files = sorted(
            str(p.relative_to(self.device))
            for p in self.device.rglob("*")
            if "trust" not in p.parts and p.name != "update-state.json"
        )
        store = self.store
        active = store.active("tiny")
        return {
            "active": active.version if active else None,
            "versions": store.versions("tiny"),
            "floor": str(store.floor("tiny")),
            "files": files,
        }


@pytest.fixture
def fleet(tiny_model_dir: Path, tmp_path: Path) -> Fleet:
    repo = ReleaseRepository.create(tmp_path / "repo", tmp_path / "keys")
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    device = tmp_path / "device"
    pin_root(device / "trust", repo.trusted_root_path())
    return Fleet(repo, device, tiny_model_dir, tmp_path)
