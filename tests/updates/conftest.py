"""A real signed repository (the hub's code) and a device with the fleet's root pinned."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        """What a refused update must not change: pointers, versions, floors, the update
        phase and the content (sha256) of every file outside trust/ (see `trust`).
        update-state.json is left out: a refused update records its error there."""
        store = self.store
        active = store.active("tiny")
        return {
            "active": active.version if active else None,
            "versions": store.versions("tiny"),
            "floor": str(store.floor("tiny")),
            "phase": self.manager().state.load().phase,
            "files": {
                path: digest
                for path, digest in file_hashes(self.device).items()
                if not path.startswith("trust/") and path != "update-state.json"
            },
        }

    def trust(self) -> dict[str, str]:
        """sha256 of every file in trust/: the metadata the device has verified so far."""
        return file_hashes(self.device / "trust")

    def honest_metadata(self) -> dict[str, str]:
        """sha256 of the repository's current metadata, under the names the device stores
        it by in trust/ (current: the chain timestamp -> snapshot -> targets, newest root),
        and of every root version, which the device keeps in trust/root_history/."""
        folder = self.repo.root / "metadata"

        def signed(name: str) -> dict[str, Any]:
            document: dict[str, Any] = json.loads((folder / name).read_bytes())["signed"]
            return document

        snapshot = signed("timestamp.json")["meta"]["snapshot.json"]["version"]
        targets = signed(f"{snapshot}.snapshot.json")["meta"]["targets.json"]["version"]
        roots = sorted(folder.glob("*.root.json"), key=lambda path: int(path.name.split(".")[0]))
        current = {
            "timestamp.json": folder / "timestamp.json",
            "snapshot.json": folder / f"{snapshot}.snapshot.json",
            "targets.json": folder / f"{targets}.targets.json",
            "root.json": roots[-1],
        }
        current.update({f"root_history/{path.name}": path for path in roots})
        return {name: sha256_of(path) for name, path in current.items()}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        str(path.relative_to(folder)): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def fleet(tiny_model_dir: Path, tmp_path: Path) -> Fleet:
    repo = ReleaseRepository.create(tmp_path / "repo", tmp_path / "keys")
    repo.publish(tiny_model_dir, "tiny", "1.0.0")
    device = tmp_path / "device"
    pin_root(device / "trust", repo.trusted_root_path())
    return Fleet(repo, device, tiny_model_dir, tmp_path)
