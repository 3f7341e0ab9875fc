"""Typed configuration from a TOML file plus environment overrides, for every program.

A bad value is reported with its source (the file, or the environment variable), the
key and the problem, so an operator can fix it without reading code.

Overrides are `<PREFIX>SECTION__KEY=value`; lists and tables are JSON.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError


class ConfigError(Exception):
    """The configuration cannot be used; the message names where and why."""


Model = TypeVar("Model", bound=BaseModel)
Overrides = dict[tuple[str, str], tuple[Any, str]]  # (section, key) -> (value, variable)


def load_typed(
    model: type[Model],
    *,
    env_prefix: str,
    config_env: str,
    default_paths: Sequence[Path],
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Model:
    """Load `path` (or `$config_env`, or the first default that exists), then the
    environment's overrides, into `model`."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(config_env):
        path = Path(environ[config_env])
    explicit = path is not None
    if path is None:
        path = next((p.expanduser() for p in default_paths if p.expanduser().is_file()), None)

    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = _read_toml(path, must_exist=explicit)
    overrides = _env_overrides(environ, env_prefix)
    for (section, key), (value, _var) in overrides.items():
        sect = data.setdefault(section, {})
        if not isinstance(sect, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        sect[key] = value
    try:
        return model.model_validate(data)
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


def _env_overrides(environ: Mapping[str, str], prefix: str) -> Overrides:
    found: Overrides = {}
    for var, raw in environ.items():
        if not var.startswith(prefix):
            continue
        parts = var[len(prefix) :].lower().split("__")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"environment variable {var}: expected {prefix}SECTION__KEY")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {var}: not valid JSON: {exc}") from None
        found[(parts[0], parts[1])] = (value, var)
    return found


def _describe(exc: ValidationError, source: str, overrides: Overrides) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        where = source
        if len(loc) >= 2 and (loc[0], loc[1]) in overrides:
            where = f"environment variable {overrides[(loc[0], loc[1])][1]}"
        elif len(loc) == 1:  # a whole section: blame the variables that made it
            named = sorted(var for (section, _), (_, var) in overrides.items() if section == loc[0])
            if named:
                where = "environment variable " + ", ".join(named)
        problem = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{where}: {key}: {problem}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
