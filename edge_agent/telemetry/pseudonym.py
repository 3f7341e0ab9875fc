"""The rotating pseudonym: HMAC-SHA256(device secret, ISO week).

Within one week every report of a device carries the same pseudonym, so the hub can count
devices and de-duplicate; across weeks the pseudonyms are unrelated to anyone who lacks the
secret, so weeks cannot be linked and no pseudonym maps back to a device id. The secret is
32 random bytes made on first use, kept in a 0600 file in the agent's data dir, and never
sent anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import stat
from pathlib import Path

from edge_agent.atomic import write_atomic

SECRET_BYTES = 32
# Domain separation: the same secret could one day key something else.
_CONTEXT = b"edge-agent telemetry pseudonym v1\0"


class SecretFileError(Exception):
    pass


def load_or_create_secret(path: Path) -> bytes:
    """The device's telemetry secret at `path`, made (0600) if there is none yet."""
    if not path.exists():
        write_atomic(path, secrets.token_bytes(SECRET_BYTES), mode=0o600)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        # Readable by others, the secret would let them link this device's weeks.
        path.chmod(0o600)
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise SecretFileError(
            f"{path}: telemetry secret is {len(secret)} bytes, expected {SECRET_BYTES}; "
            "delete the file to make a new one (old pseudonyms are then unlinkable)"
        )
    return secret


def pseudonym(secret: bytes, period: str) -> str:
    """The pseudonym for `period` (an ISO week such as 2030-W01): 64 hex digits."""
    return hmac.new(secret, _CONTEXT + period.encode(), hashlib.sha256).hexdigest()
