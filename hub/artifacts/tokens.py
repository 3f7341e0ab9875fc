"""Per-device bearer tokens for the artifact server, stored as SHA-256 hashes.

The file holds no token itself, so a copy of it (a backup, a leaked disk) lets no one
download releases. Issuing a token for a device again replaces its old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.atomic import write_atomic

TOKEN_PREFIX = "edt_"
TOKEN_RANDOM_BYTES = 32
TOKENS_SCHEMA_VERSION = 1
DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class TokenFileError(Exception):
    """The tokens file cannot be read or written; the message names it and why."""


class DeviceToken(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    issued_at: datetime


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: int = TOKENS_SCHEMA_VERSION
    devices: dict[str, DeviceToken] = Field(default_factory=dict)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    """Issues tokens and checks them; picks up tokens issued by another process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._devices_by_hash: dict[str, str] = {}

    def issue(self, device_id: str) -> str:
        """A new random token for `device_id`; shown once, only its hash is kept."""
        if not DEVICE_ID.fullmatch(device_id):
            raise ValueError(
                f"invalid device id {device_id!r}: use 1-128 of A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_RANDOM_BYTES)
        with self._locked_file() as tokens:
            tokens.devices[device_id] = DeviceToken(
                sha256=token_hash(token), issued_at=datetime.now(UTC)
            )
        return token

    def revoke(self, device_id: str) -> bool:
        """Forget `device_id`'s token; False when it had none."""
        with self._locked_file() as tokens:
            return tokens.devices.pop(device_id, None) is not None

    @contextmanager
    def _locked_file(self) -> Iterator[TokenFile]:
        """The tokens, to change in the block; written back atomically at its end."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two operators issuing at once both count
            tokens = self._read()
            yield tokens
            write_atomic(self.path, (tokens.model_dump_json(indent=2) + "\n").encode(), mode=0o600)

    def device_for(self, token: str) -> str | None:
        """The device that holds `token`, or None."""
        with self._lock:
            self._reload_if_changed()
            return self._devices_by_hash.get(token_hash(token))

    def _reload_if_changed(self) -> None:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._devices_by_hash = None, {}
            return
        except OSError as exc:
            raise TokenFileError(f"{self.path}: cannot read the tokens file: {exc}") from None
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return
        tokens = self._read()
        self._devices_by_hash = {entry.sha256: device for device, entry in tokens.devices.items()}
        self._seen = seen

    def _read(self) -> TokenFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return TokenFile()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{self.path}: cannot read the tokens file: {exc}") from None
        try:
            tokens = TokenFile.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise TokenFileError(
                f"{self.path}: not a valid tokens file ({exc}); restore it from backup or "
                "remove it and issue new tokens"
            ) from None
        if tokens.schema_version > TOKENS_SCHEMA_VERSION:
            raise TokenFileError(
                f"{self.path}: schema version {tokens.schema_version} is newer than this hub "
                "understands; update the hub"
            )
        return tokens
