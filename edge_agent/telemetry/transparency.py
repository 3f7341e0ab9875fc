"""The local transparency log: exactly the bytes of every telemetry message, bounded.

Each line is one JSON record: when, what happened to the message (queued for the hub,
only logged under the local-log policy, or withheld because the privacy budget was spent),
its topic and its encoded bytes (base64, so the bytes are kept exactly). `render` shows
them decoded for `edge-agent telemetry show`.

A record is on the disk (fsync) when `record` returns, and the caller queues the message
only after that, so a power cut cannot leave a message that went out unlogged.

Bounded by `max_bytes`: two files, the current one and the previous one, each at most half
of it. When the current file would grow past its half it replaces the previous one, so the
newest records are always kept and the oldest go first.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from edge_agent.atomic import fsync_dir, make_dirs
from edge_agent.protocol import MAX_MESSAGE_BYTES

# A record of the largest message: base64 grows it by a third, plus the JSON around it.
MAX_RECORD_BYTES = (MAX_MESSAGE_BYTES + 2) // 3 * 4 + 512
MIN_LOG_BYTES = 2 * MAX_RECORD_BYTES


class Action(StrEnum):
    QUEUED = "queued"  # put into the outbox: it goes to the hub when the link is up
    LOGGED = "logged"  # policy local-log: kept here only, never sent
    WITHHELD = "withheld"  # privacy budget spent: not sent


@dataclass(frozen=True)
class LogEntry:
    recorded_at: datetime
    action: Action
    topic: str
    payload: bytes


class TransparencyLog:
    def __init__(self, path: Path, max_bytes: int) -> None:
        if max_bytes < MIN_LOG_BYTES:
            raise ValueError(
                f"transparency log limit {max_bytes} bytes is under the minimum of "
                f"{MIN_LOG_BYTES} (two records of the largest message)"
            )
        self.path = path
        self.previous_path = path.with_name(path.name + ".1")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def record(self, action: Action, topic: str, payload: bytes, *, at: datetime) -> None:
        line = (
            json.dumps(
                {
                    "recorded_at": at.astimezone(UTC).isoformat(),
                    "action": action.value,
                    "topic": topic,
                    "payload": base64.b64encode(payload).decode(),
                }
            )
            + "\n"
        ).encode()
        half = self.max_bytes // 2
        with self._lock:
            make_dirs(self.path.parent)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size + len(line) > half:
                if size:
                    self.path.replace(self.previous_path)
                if len(line) > half:
                    # Cannot happen for a valid message (MIN_LOG_BYTES); never break the bound.
                    raise ValueError(f"a {len(line)}-byte log record is over half the limit")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                # On the disk before the message is queued: a power cut must not leave a
                # message that goes out with no line here.
                os.fsync(fd)
            finally:
                os.close(fd)
            if size + len(line) > half or not size:
                fsync_dir(self.path.parent)  # a new file, or the rotation's rename

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.previous_path, self.path) if p.exists())

    def entries(self) -> list[LogEntry]:
        """Every record kept, oldest first; a line cut short by a crash is skipped."""
        found: list[LogEntry] = []
        with self._lock:
            for part in (self.previous_path, self.path):
                try:
                    lines = part.read_bytes().splitlines()
                except FileNotFoundError:
                    continue
                found.extend(e for e in map(_parse, lines) if e is not None)
        return found


def _parse(line: bytes) -> LogEntry | None:
    try:
        raw = json.loads(line)
        return LogEntry(
            recorded_at=datetime.fromisoformat(raw["recorded_at"]),
            action=Action(raw["action"]),
            topic=str(raw["topic"]),
            payload=base64.b64decode(raw["payload"], validate=True),
        )
    except (ValueError, KeyError, TypeError):
        return None


def render(entries: list[LogEntry], waiting: Collection[str] | None = None) -> str:
    """The entries as a person reads them: a header line, then the message, decoded.

    `waiting`: the message ids still in the outbox; a queued message not among them has
    been sent (None: the outbox was not looked at)."""
    if not entries:
        return "No telemetry has been sent or logged.\n"
    parts: list[str] = []
    for entry in entries:
        try:
            decoded = json.loads(entry.payload)
            body = json.dumps(decoded, indent=2)
        except ValueError:
            decoded, body = None, repr(entry.payload)
        state = entry.action.value
        if entry.action is Action.QUEUED and waiting is not None:
            message_id = decoded.get("message_id") if isinstance(decoded, dict) else None
            state = "queued, not sent yet" if message_id in waiting else "sent"
        parts.append(
            f"{entry.recorded_at.isoformat()}  {state}  {entry.topic}  ({len(entry.payload)} bytes)"
        )
        parts.append(body)
    return "\n".join(parts) + "\n"
