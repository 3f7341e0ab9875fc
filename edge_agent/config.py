"""The agent's one typed configuration: a TOML file, then environment overrides.

Every key carries its unit in its name. A bad value is reported with the file (or the
environment variable), the key and the problem, and the agent refuses to start.

Environment overrides use `EDGE_AGENT__SECTION__KEY`, e.g. `EDGE_AGENT__API__PORT=8081`;
lists are JSON (`EDGE_AGENT__API__API_KEYS='["k1"]'`).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_PREFIX = "EDGE_AGENT__"
CONFIG_ENV = "EDGE_AGENT_CONFIG"
DEFAULT_PATHS = (Path("/etc/edge-agent/agent.toml"), Path("~/.config/edge-agent/agent.toml"))


class ConfigError(Exception):
    """The configuration cannot be used; the message names where and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: tuple[str, ...] = ()
    max_request_bytes: int = Field(1_048_576, ge=1024)
    retry_after_seconds: int = Field(1, ge=1)


class RuntimeConfig(_Section):
    intra_op_threads: int = Field(0, ge=0, description="0 = every usable core")
    execution_provider: str = Field("cpu", pattern="^(cpu|cuda|dml|webgpu|auto)$")
    max_active_sequences: int = Field(4, ge=1)
    max_queued_requests: int = Field(16, ge=0)
    max_batch_size: int = Field(4, ge=1)
    default_max_tokens: int = Field(512, ge=1)


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


class AgentConfig(_Section):
    api: ApiConfig = ApiConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    models: ModelsConfig = ModelsConfig()
    store: StoreConfig = StoreConfig()
    updates: UpdatesConfig = UpdatesConfig()

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


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
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
        data = _read_toml(path, must_exist=explicit)
    overrides = _env_overrides(environ)
    for (section, key), (value, _var) in overrides.items():
        sect = data.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        sect[key] = value
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, overrides)) from None


def _read_toml(path: Path, *, must_exist: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"{path}: config file not found") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, str], tuple[Any, str]]:
    found: dict[tuple[str, str], tuple[Any, str]] = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        parts = var[len(ENV_PREFIX) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {var}: expected {ENV_PREFIX}SECTION__KEY")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {var}: not valid JSON: {exc}") from None
        found[(parts[0], parts[1])] = (value, var)
    return found


def _describe(
    exc: ValidationError, source: str, overrides: Mapping[tuple[str, str], tuple[Any, str]]
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        where = source
        if len(loc) >= 2 and (loc[0], loc[1]) in overrides:
            where = f"environment variable {overrides[(loc[0], loc[1])][1]}"
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {key}: {problem}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
