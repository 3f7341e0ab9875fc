"""Offline-first sync: the durable outbox (outbox), the MQTT link (link), persisted link
state (state), periodic jobs (jobs), desired-state orchestration (orchestrate), enrollment
(identity), settings from config and enrollment (settings) and the running service
(service). Exports load lazily: `edge-agent serve` on a device in no fleet, and
`edge-agent status`, need none of SQLAlchemy or paho."""

from edge_agent.lazy import lazy_exports

_EXPORTS = {
    "InvalidMessage": "edge_agent.sync.errors",
    "MAX_PAYLOAD_BYTES": "edge_agent.sync.outbox",
    "MessageIdConflict": "edge_agent.sync.errors",
    "Outbox": "edge_agent.sync.outbox",
    "OutboxClosed": "edge_agent.sync.errors",
    "OutboxError": "edge_agent.sync.errors",
    "OutboxFull": "edge_agent.sync.errors",
    "OutboxItem": "edge_agent.sync.outbox",
    "OutboxKind": "edge_agent.sync.outbox",
    "OutboxStats": "edge_agent.sync.outbox",
    "OutboxUnusable": "edge_agent.sync.errors",
    "PayloadTooLarge": "edge_agent.sync.errors",
    "SyncError": "edge_agent.sync.errors",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
