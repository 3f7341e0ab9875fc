"""A console with everything a serving hub gives it: a real signed release repository (chat
1.0.0 and 2.0.0, which shares most chunks with it) and a real device CA (box-03 holds a
certificate)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from starlette.applications import Starlette

from edge_agent.sync.identity import make_csr, new_key
from hub.config import HubConfig
from hub.console.app import console_mount
from hub.console.sessions import ConsoleSessions
from hub.fleet.authority import FleetAuthority
from hub.registry.repository import ReleaseRepository
from hub.rollouts.api import RolloutDesk, api_mount
from hub.rollouts.releases import repository_check
from tests.conftest import ServerThread
from tests.hub_console.conftest import Console


@dataclass
class FullConsole(Console):
    repository: ReleaseRepository | None = None
    authority: FleetAuthority | None = None


def publish_chat(repository: ReleaseRepository, model_dir: Path, work: Path) -> None:
    """chat 1.0.0, and 2.0.0 that differs in one small file (most chunks shared)."""
    repository.publish(model_dir, "chat", "1.0.0")
    variant = work / "variant"
    shutil.copytree(model_dir, variant)
    config = variant / "tokenizer_config.json"
    settings = json.loads(config.read_text())
    settings["model_max_length"] = 1024
    config.write_text(json.dumps(settings, indent=2) + "\n")
    repository.publish(variant, "chat", "2.0.0")


@pytest.fixture(name="full")
def full_console_fixture(
    engine: Engine, tmp_path: Path, tiny_model_dir: Path
) -> Iterator[FullConsole]:
    repository = ReleaseRepository.create(tmp_path / "repo", tmp_path / "keys")
    publish_chat(repository, tiny_model_dir, tmp_path)
    config = HubConfig.model_validate(
        {
            "broker": {"identity_dir": str(tmp_path / "identity")},
            "artifacts": {"tokens_file": str(tmp_path / "device-tokens.json")},
        }
    )
    authority = FleetAuthority(config)
    authority.ca.issue_device_certificate(make_csr(new_key(), "box-03"), "box-03")
    key = Ed25519PrivateKey.generate()
    desk = RolloutDesk(engine, repository_check(repository), lambda: key, [ConsoleSessions(engine)])
    mount = console_mount(desk, repository=repository, authority=authority)
    with ServerThread(Starlette(routes=[api_mount(desk), mount])) as server:
        shown = FullConsole(server.url, engine, repository=repository, authority=authority)
        try:
            yield shown
        finally:
            for browser in shown.browsers:
                browser.client.close()
