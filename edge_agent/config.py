"""The agent's one typed configuration: a TOML file, then environment overrides.

Every key carries its unit in its name. A bad value is reported with the file (or the
environment variable), the key and the problem, and the agent refuses to start.

Environment overrides use `EDGE_AGENT__SECTION__KEY`, e.g. `EDGE_AGENT__API__PORT=8081`;
lists are JSON (`EDGE_AGENT__API__API_KEYS='["k1"]'`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.tomlconfig import ConfigError, load_typed

ENV_PREFIX = "EDGE_AGENT__"
CONFIG_ENV = "EDGE_AGENT_CONFIG"
DEFAULT_PATHS = (Path("/etc/edge-agent/agent.toml"), Path("~/.config/edge-agent/agent.toml"))

__all__ = ["AgentConfig", "ConfigError", "load_config"]

# A Host header value: a DNS name or IPv4 address, or a bracketed IPv6 address, then a port.
HOST_PATTERN = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
ORIGIN_PATTERN = re.compile(r"https?://" + HOST_PATTERN.pattern)
PEER_URL = re.compile(r"https://" + HOST_PATTERN.pattern + "/?")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiConfig(_Section):
    """The local API. It answers only to its own addresses and `allowed_hosts` (so a web
    page cannot reach it through DNS rebinding), and to browsers of `cors_origins` only."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = Field(
        (), description="extra Host names, 'name' (any port) or 'name:port'"
    )
    cors_origins: tuple[str, ...] = Field((), description="browser origins, e.g. https://app.lan")
    max_request_bytes: int = Field(1_048_576, ge=1024)
    request_body_timeout_seconds: float = Field(30.0, gt=0)
    retry_after_seconds: int = Field(1, ge=1)

    @field_validator("api_keys")
    @classmethod
    def _keys_are_not_blank(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not key.strip():
                raise ValueError(
                    "an API key is empty or blank, which would let anyone in: remove it or "
                    "set a long random key (python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
            if key != key.strip():
                raise ValueError(
                    "an API key starts or ends with whitespace, which no HTTP client can "
                    "send: remove the whitespace"
                )
        return keys

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            if not HOST_PATTERN.fullmatch(host):
                raise ValueError(
                    f"'{host}' is not a host name or name:port (no scheme, path or wildcard)"
                )
        return tuple(host.lower().rstrip(".") for host in hosts)

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_exact(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if not ORIGIN_PATTERN.fullmatch(origin):
                raise ValueError(
                    f"'{origin}' is not an origin: write scheme://host[:port], e.g. "
                    "https://app.example.org ('*' is refused: it would open the API to every "
                    "web page)"
                )
        return tuple(origin.lower() for origin in origins)


class RuntimeConfig(_Section):
    intra_op_threads: int = Field(0, ge=0, description="0 = every usable core")
    execution_provider: str = Field("cpu", pattern="^(cpu|cuda|dml|webgpu|auto)$")
    max_active_sequences: int = Field(4, ge=1)
    max_queued_requests: int = Field(16, ge=0)
    max_batch_size: int = Field(4, ge=1)
    default_max_tokens: int = Field(512, ge=1)
    prompt_cache_mib: int = Field(
        512, ge=0, description="memory for kept prompt prefixes, per model; 0 = off"
    )
    keep_alive_seconds: float = Field(
        300.0, description="an idle model unloads after this long; < 0 = never (as Ollama)"
    )
    memory_budget_mib: int = Field(
        0, ge=0, description="memory the loaded models share; 0 = 60% of the machine's"
    )


class ModelsConfig(_Section):
    default: str = ""


class StoreConfig(_Section):
    dir: Path = Path("~/.local/share/edge-agent")


class UpdatesConfig(_Section):
    source: str = Field("", description="hub URL or repository folder; empty = none")
    token: str = ""
    models: tuple[str, ...] = ()
    bandwidth_bytes_per_second: int = Field(0, ge=0, description="0 = no cap")
    watch_interval_seconds: float = Field(2.0, gt=0)


class SyncConfig(_Section):
    """The MQTT link to the hub. Empty broker_url (or device_id) = sync not configured."""

    broker_url: str = Field("", description="mqtt://host:port or mqtts://host:port; empty = off")
    device_id: str = ""
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    keepalive_seconds: int = Field(60, ge=5, le=65535)
    session_expiry_seconds: int = Field(7 * 24 * 3600, ge=0)
    reconnect_min_seconds: float = Field(1.0, gt=0)
    reconnect_max_seconds: float = Field(120.0, gt=0)
    outbox_max_messages: int = Field(100_000, ge=1)
    outbox_max_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    max_in_flight_messages: int = Field(1000, ge=1, le=20_000)
    heartbeat_interval_seconds: float = Field(300.0, gt=0)
    flush_interval_seconds: float = Field(5.0, gt=0)
    update_check_interval_seconds: float = Field(3600.0, gt=0)
    housekeeping_interval_seconds: float = Field(86_400.0, gt=0)
    director_keys_file: Path | None = Field(
        None, description="JSON list of trusted director Ed25519 public keys (PEM strings)"
    )

    @property
    def configured(self) -> bool:
        return bool(self.broker_url and self.device_id)


class PeersConfig(_Section):
    """LAN peers (edge_agent.updates.chunks, peer_server): share verified chunks with the
    other devices of a site over mutual TLS with the fleet's device certificates."""

    serve: bool = Field(False, description="serve this device's chunks to its peers")
    host: str = Field("127.0.0.1", description="loopback; a LAN address only when set here")
    port: int = Field(8765, ge=1, le=65535)
    sources: tuple[str, ...] = Field(
        (), description="peers asked for chunks before the hub, e.g. https://10.0.0.7:8765"
    )
    crl_file: Path | None = Field(None, description="the hub's crl.pem: refuse revoked peers")
    max_connections: int = Field(32, ge=1, description="beyond it a peer gets 503")
    max_parallel_reads: int = Field(4, ge=1)
    timeout_seconds: float = Field(10.0, gt=0)
    discover: bool = Field(
        False, description="find and announce peers by mDNS/DNS-SD on the LAN (zeroconf)"
    )
    discover_seconds: float = Field(2.0, gt=0, le=30, description="how long to listen")

    @field_validator("sources")
    @classmethod
    def _sources_are_https(cls, sources: tuple[str, ...]) -> tuple[str, ...]:
        for source in sources:
            if not PEER_URL.fullmatch(source):
                raise ValueError(
                    f"'{source}' is not a peer address: write https://host:port (peers speak "
                    "mutual TLS only, with no path)"
                )
        return sources


class TelemetryConfig(_Section):
    """Anonymous usage telemetry (edge_agent.telemetry): aggregated, pseudonymous, no text."""

    policy: str = Field("aggregate", pattern="^(off|aggregate|local-log)$")
    window_seconds: int = Field(
        3600, ge=300, le=86_400, description="must divide a day (86400) evenly"
    )
    publish_interval_seconds: float = Field(300.0, gt=0)
    dp_epsilon: float | None = Field(None, gt=0, le=100, description="None = no noise")
    dp_budget_per_period: float = Field(10.0, gt=0, description="epsilon per ISO week")
    transparency_log_max_bytes: int = Field(1_048_576, ge=262_144)

    @field_validator("window_seconds")
    @classmethod
    def _divides_day(cls, value: int) -> int:
        if 86_400 % value:
            raise ValueError(f"{value} does not divide a day (86400 seconds) evenly")
        return value


class AgentConfig(_Section):
    api: ApiConfig = ApiConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    models: ModelsConfig = ModelsConfig()
    store: StoreConfig = StoreConfig()
    updates: UpdatesConfig = UpdatesConfig()
    sync: SyncConfig = SyncConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    peers: PeersConfig = PeersConfig()

    @property
    def data_dir(self) -> Path:
        return self.store.dir.expanduser()

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def trust_dir(self) -> Path:
        return self.data_dir / "trust"

    @property
    def update_state_path(self) -> Path:
        return self.data_dir / "update-state.json"

    @property
    def sync_dir(self) -> Path:
        return self.data_dir / "sync"


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load `path` (or the first default file that exists), then apply the environment."""
    return load_typed(
        AgentConfig,
        env_prefix=ENV_PREFIX,
        config_env=CONFIG_ENV,
        default_paths=DEFAULT_PATHS,
        path=path,
        environ=environ,
    )
