"""Offline-first sync: the durable outbox (outbox), the MQTT link (link), persisted link
state (state), periodic jobs (jobs) and desired-state orchestration (orchestrate). Only the
outbox is imported here: the link pulls in paho, which `edge-agent status` does not need."""

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
