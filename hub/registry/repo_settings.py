"""Hub-side state of a release repository that is not TUF metadata.

Kept in <root>/repository.json (never served): the metadata lifetimes chosen at
creation, and every revoked version, so a revoked version number is never reused.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.atomic import write_atomic
from hub.registry.errors import RepositoryStateError

SETTINGS_FILE = "repository.json"
SETTINGS_SCHEMA_VERSION = 1


class ExpiryDays(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    root_days: int = Field(ge=1)
    targets_days: int = Field(ge=1)
    snapshot_days: int = Field(ge=1)
    timestamp_days: int = Field(ge=1)


class RepositorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = SETTINGS_SCHEMA_VERSION
    expiry: ExpiryDays
    revoked: dict[str, list[str]] = Field(default_factory=dict)  # model -> versions


def load_settings(root: Path) -> RepositorySettings:
    path = root / SETTINGS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RepositoryStateError(
            f"{root}: no release repository here ({SETTINGS_FILE} is missing); "
            "create one with `edge-hub repo init`"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RepositoryStateError(f"{path}: cannot read: {exc}") from None
    try:
        settings = RepositorySettings.model_validate_json(text)
    except ValidationError as exc:
        raise RepositoryStateError(f"{path}: not valid repository settings: {exc}") from None
    if settings.schema_version > SETTINGS_SCHEMA_VERSION:
        raise RepositoryStateError(
            f"{path}: schema version {settings.schema_version} is newer than this hub "
            f"understands ({SETTINGS_SCHEMA_VERSION}); update the hub"
        )
    return settings


def save_settings(root: Path, settings: RepositorySettings) -> None:
    write_atomic(root / SETTINGS_FILE, (settings.model_dump_json(indent=2) + "\n").encode())
