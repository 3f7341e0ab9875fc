"""The hub's one typed configuration: a TOML file, then environment overrides.

Overrides use `EDGE_HUB__SECTION__KEY`, e.g. `EDGE_HUB__ARTIFACTS__PORT=8071`. Reading
the file, parsing overrides and describing errors are the agent's loader
(edge_agent.config), so both speak the same way; only the prefix and the model differ.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent import config as agent_config
from edge_agent.config import ConfigError

ENV_PREFIX = "EDGE_HUB__"
CONFIG_ENV = "EDGE_HUB_CONFIG"
DEFAULT_PATHS = (Path("/etc/edge-hub/hub.toml"), Path("~/.config/edge-hub/hub.toml"))

__all__ = ["ConfigError", "HubConfig", "load_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RepositoryConfig(_Section):
    dir: Path = Path("~/.local/share/edge-hub/repository")
    keys_dir: Path | None = Field(
        None, description="default: 'keys' beside the repository folder, never inside it"
    )
    refresh_interval_seconds: int = Field(3600, ge=1)


class ArtifactsConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8070, ge=0, le=65535)
    tokens_file: Path = Path("~/.local/share/edge-hub/device-tokens.json")


class HubConfig(_Section):
    repository: RepositoryConfig = RepositoryConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()

    @property
    def repository_dir(self) -> Path:
        return self.repository.dir.expanduser()

    @property
    def keys_dir(self) -> Path:
        # Outside the repository folder: that folder is served and copied to USB sticks.
        configured = self.repository.keys_dir
        return configured.expanduser() if configured else self.repository_dir.parent / "keys"

    @property
    def tokens_file(self) -> Path:
        return self.artifacts.tokens_file.expanduser()


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> HubConfig:
    """Load `path` (or the first default file that exists), then apply the environment."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    explicit = path is not None
    if path is None:
        path = next((p.expanduser() for p in DEFAULT_PATHS if p.expanduser().is_file()), None)

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = agent_config._read_toml(path, must_exist=explicit)
    overrides = _env_overrides(environ)
    for (section, key), (value, _var) in overrides.items():
        sect = data.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        sect[key] = value
    try:
        return HubConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(agent_config._describe(exc, source, overrides)) from None


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], tuple[Any, str]]:
    # The agent's parser knows only its own prefix: hand it our variables renamed, and
    # name ours again in what it returns or reports.
    theirs, ours = agent_config.ENV_PREFIX, ENV_PREFIX
    renamed = {theirs + k[len(ours) :]: v for k, v in environ.items() if k.startswith(ours)}
    try:
        found = agent_config._env_overrides(renamed)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace(theirs, ours)) from None
    return {key: (value, ours + var[len(theirs) :]) for key, (value, var) in found.items()}
