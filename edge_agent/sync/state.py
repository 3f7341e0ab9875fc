"""Small persisted files of the sync link, each written atomically (temp file + rename).

status.json            what `edge-agent status` (another process) shows: connected or
                       not and since when, last successful sync, outbox depth, drops
desired-sequence.json  the sequence of the last desired state handed on: a retained
                       redelivery carries the same one and is a no-op, an older one is
                       refused as a replay, also across restarts
director keys          a JSON list of PEM Ed25519 public keys the agent trusts to sign
                       desired state (from enrollment or provisioning)
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BaseModel, ConfigDict, ValidationError

from edge_agent.atomic import write_atomic
from edge_agent.protocol import key_id

STATUS_FILE = "status.json"
SEQUENCE_FILE = "desired-sequence.json"


class LinkStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    device_id: str
    broker: str
    connected: bool = False
    since: datetime  # when `connected` last changed (or the link started)
    last_sync_at: datetime | None = None  # last PUBACK received or desired state accepted
    outbox_depth: int = 0
    dropped_telemetry: int = 0
    denied_messages: int = 0  # refused by the broker (PUBACK failure reason), dropped
    last_error: str | None = None
    updated_at: datetime
    pid: int = 0


def save_status(path: Path, status: LinkStatus) -> None:
    write_atomic(path, status.model_dump_json(indent=2).encode())


def load_status(path: Path) -> LinkStatus | None:
    """The last status the link wrote, None if it never ran here; ValueError if damaged."""
    try:
        return LinkStatus.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise ValueError(f"{path} is damaged: {exc}") from None


def process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SequenceFile:
    """The last accepted desired-state sequence, 0 when none."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return 0
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path} is damaged ({exc}); move it aside to reset") from None
        value = data.get("sequence") if isinstance(data, dict) else None
        if type(value) is not int or value < 0:
            raise ValueError(f"{self.path}: 'sequence' must be a non-negative integer")
        return value

    def save(self, sequence: int) -> None:
        payload = {"sequence": sequence, "saved_at": datetime.now(UTC).isoformat()}
        write_atomic(self.path, json.dumps(payload).encode())


def load_director_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """key id -> public key, from a JSON list of PEM strings; ValueError naming the problem."""
    try:
        entries = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"director keys file {path}: {exc}") from None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise ValueError(f"director keys file {path}: must be a JSON list of PEM strings")
    keys: dict[str, Ed25519PublicKey] = {}
    for index, pem in enumerate(entries):
        try:
            key = load_pem_public_key(pem.encode())
        except ValueError as exc:
            raise ValueError(f"director keys file {path}: entry {index}: {exc}") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"director keys file {path}: entry {index} is not an Ed25519 key")
        keys[key_id(key)] = key
    return keys
