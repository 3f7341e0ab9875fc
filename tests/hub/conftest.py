"""Fixtures of the hub tests: a real repository on disk and a TUF client that reads it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from hub.artifacts.server import create_app
from hub.artifacts.tokens import TokenStore
from hub.registry.repository import ReleaseRepository
from tests.conftest import ServerThread

BASE_URL = "https://hub.test/"


class RepositoryFolderFetcher(FetcherInterface):
    """Serves BASE_URL from a repository folder, as the artifact server would."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.root / url.removeprefix(BASE_URL)
        if not url.startswith(BASE_URL) or not path.is_file():
            raise DownloadHTTPError(f"{url}: not found", 404)
        return iter([path.read_bytes()])


def fresh_updater(repo: ReleaseRepository, work: Path) -> Updater:
    """A client that has pinned only the first root, like a newly installed agent."""
    metadata = work / "metadata"
    downloads = work / "downloads"
    metadata.mkdir(parents=True)
    downloads.mkdir()
    return Updater(
        metadata_dir=str(metadata),
        metadata_base_url=BASE_URL + "metadata/",
        target_base_url=BASE_URL + "targets/",
        target_dir=str(downloads),
        fetcher=RepositoryFolderFetcher(repo.root),
        bootstrap=repo.trusted_root_path().read_bytes(),
    )


@pytest.fixture
def repo(tmp_path: Path) -> ReleaseRepository:
    return ReleaseRepository.create(tmp_path / "repo", tmp_path / "keys")


@pytest.fixture
def variant_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model with a changed tokenizer config: a release that moves few bytes."""
    copy = tmp_path / "variant"
    shutil.copytree(tiny_model_dir, copy)
    config = copy / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["model_max_length"] = 1024
    config.write_text(json.dumps(settings, indent=2) + "\n")
    return copy


class ArtifactServer(ServerThread):
    """The artifact server on a free loopback port, in a thread."""

    def __init__(self, repo: ReleaseRepository, tokens_file: Path) -> None:
        self.tokens = TokenStore(tokens_file)
        super().__init__(create_app(repo.root, self.tokens))


@pytest.fixture
def artifact_server(repo: ReleaseRepository, tmp_path: Path) -> Iterator[ArtifactServer]:
    with ArtifactServer(repo, tmp_path / "tokens.json") as server:
        yield server
