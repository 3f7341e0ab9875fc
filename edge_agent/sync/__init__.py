"""Offline-first sync: the durable outbox (MQTT link and desired/reported state to come)."""

from edge_agent.sync.errors import (
    InvalidMessage,
    MessageIdConflict,
    OutboxClosed,
    OutboxError,
    OutboxFull,
    OutboxUnusable,
    PayloadTooLarge,
    SyncError,
)
from edge_agent.sync.outbox import (
    MAX_PAYLOAD_BYTES,
    Outbox,
    OutboxItem,
    OutboxKind,
    OutboxStats,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "InvalidMessage",
    "MessageIdConflict",
    "Outbox",
    "OutboxClosed",
    "OutboxError",
    "OutboxFull",
    "OutboxItem",
    "OutboxKind",
    "OutboxStats",
    "OutboxUnusable",
    "PayloadTooLarge",
    "SyncError",
]
