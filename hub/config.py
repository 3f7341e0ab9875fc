"""The hub's one typed configuration: a TOML file, then environment overrides.

Overrides use `EDGE_HUB__SECTION__KEY`, e.g. `EDGE_HUB__ARTIFACTS__PORT=8071`. The
loader is the agent's (edge_agent.tomlconfig), so both report errors the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.tomlconfig import ConfigError, load_typed

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
    tls_names: list[str] = Field(
        default_factory=list,
        description="host names and addresses devices reach the hub by (its HTTPS "
        "certificate names them, plus host and loopback)",
    )
    insecure_http: bool = Field(
        False, description="serve plain HTTP instead of HTTPS; allowed on loopback only"
    )


class BrokerConfig(_Section):
    """The MQTT broker: `managed` (default) runs Mosquitto as the hub's child process with
    a generated config and the hub's device CA (the hub stops, with the install command,
    where Mosquitto is missing); `external` connects to `url` instead."""

    mode: Literal["managed", "external"] = "managed"
    url: str | None = Field(None, description="external broker, e.g. mqtts://broker:8883")
    host: str = "127.0.0.1"
    port: int = Field(8883, ge=1, le=65535)
    data_dir: Path = Path("~/.local/share/edge-hub/broker")
    identity_dir: Path = Path("~/.local/share/edge-hub/identity")
    binary: Path | None = Field(None, description="default: mosquitto on PATH or in /usr/sbin")
    public_url: str | None = Field(
        None,
        description="the address devices connect to, told to them at enrollment; "
        "default: url (external) or mqtts://host:port (managed)",
    )

    @model_validator(mode="after")
    def _url_for_external(self) -> BrokerConfig:
        if self.mode == "external" and not self.url:
            raise ValueError('mode "external" needs url, e.g. url = "mqtts://broker:8883"')
        return self

    @property
    def hub_url(self) -> str:
        """Where the hub's own clients connect."""
        return self.url or f"mqtts://{self.host}:{self.port}"

    @property
    def device_url(self) -> str:
        return self.public_url or self.hub_url


DATA_DIR = Path("~/.local/share/edge-hub")


class DatabaseConfig(_Section):
    url: str | None = Field(
        None,
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db; "
        "default: a SQLite file hub.sqlite3 in the hub's data folder",
    )


class TelemetryConfig(_Section):
    """Anonymous usage telemetry as the hub shows it."""

    # A cell (release x time bucket) backed by fewer distinct device pseudonyms is
    # suppressed: fewer than 2 would show a single device's usage.
    k_anonymity: int = Field(5, ge=2)


class ApiConfig(_Section):
    """The operator REST API (/api/v1/) on the hub's HTTPS server."""

    operator_tokens_file: Path = Field(
        Path("~/.local/share/edge-hub/operator-tokens.json"),
        description="hashes of operator API tokens with name and role "
        "(`edge-hub rollout token NAME --role ROLE` issues one)",
    )


class HubConfig(_Section):
    repository: RepositoryConfig = RepositoryConfig()
    artifacts: ArtifactsConfig = ArtifactsConfig()
    database: DatabaseConfig = DatabaseConfig()
    broker: BrokerConfig = BrokerConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    api: ApiConfig = ApiConfig()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(DATA_DIR / 'hub.sqlite3').expanduser().absolute()}"

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

    @property
    def identity_dir(self) -> Path:
        return self.broker.identity_dir.expanduser()


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> HubConfig:
    """Load `path` (or the first default file that exists), then apply the environment."""
    return load_typed(
        HubConfig,
        env_prefix=ENV_PREFIX,
        config_env=CONFIG_ENV,
        default_paths=DEFAULT_PATHS,
        path=path,
        environ=environ,
    )
