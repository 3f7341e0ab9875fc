"""Errors of the sync package, split by who is at fault.

SyncError
└── OutboxError
    ├── InvalidMessage      the caller handed over something unpublishable (topic, kind, id)
    │   └── PayloadTooLarge the payload is over the size limit: the broker would drop the link
    ├── MessageIdConflict   the id is already queued with different content
    ├── OutboxFull          no room left and only state/events queued: nothing was dropped
    ├── OutboxUnusable      the file is not an outbox, is from a newer agent, or cannot do WAL
    └── OutboxClosed        used after close()
"""

from __future__ import annotations


class SyncError(Exception):
    pass


class OutboxError(SyncError):
    pass


class InvalidMessage(OutboxError):
    pass


class PayloadTooLarge(InvalidMessage):
    pass


class MessageIdConflict(OutboxError):
    pass


class OutboxFull(OutboxError):
    pass


class OutboxUnusable(OutboxError):
    pass


class OutboxClosed(OutboxError):
    pass
