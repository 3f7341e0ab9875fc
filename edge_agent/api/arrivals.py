"""Count generation requests that reached the server but not yet the scheduler.

The scheduler waits for these (briefly) before starting a batch, so clients that start
at the same moment are decoded together. Counted from the first byte the application
sees, and uncounted when the request is submitted or ends without a submission.

Each arrival also takes a ticket in arrival order, given back once its submission is in a
scheduler's queue (`settle`) or the request ends. A live model switch retires the old
version only once every ticket taken before the switch is back (`wait_for_earlier`):
such a request may have looked up the old version and must find its scheduler running.
"""

from __future__ import annotations

import itertools
import threading

from starlette.types import ASGIApp, Receive, Scope, Send

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_COUNTED = "edge_arrival_open"
_TICKET = "edge_arrival_ticket"


class Arrivals:
    """Begun and ended on the event loop; read from the decode and watcher threads."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._tickets = itertools.count(1)
        self._last = 0
        self._count = 0
        self._held: dict[int, None] = {}  # tickets in arrival order: the first is the oldest

    def __call__(self) -> int:
        return self._count

    def begin(self, scope: Scope) -> None:
        state = scope.setdefault("state", {})
        with self._changed:
            self._last = state[_TICKET] = next(self._tickets)
            self._held[self._last] = None
            self._count += 1
        state[_COUNTED] = True

    def end(self, scope: Scope) -> None:
        """Uncount: the request reaches the scheduler now (or never will)."""
        if scope.get("state", {}).pop(_COUNTED, False):
            with self._changed:
                self._count -= 1

    def settle(self, scope: Scope) -> None:
        """Give the ticket back: the submission is queued (or the request ended)."""
        ticket = scope.get("state", {}).pop(_TICKET, None)
        if ticket is not None:
            with self._changed:
                del self._held[ticket]
                self._changed.notify_all()

    def latest(self) -> int:
        """The ticket of the newest arrival so far (0: none)."""
        with self._changed:
            return self._last

    def wait_for_earlier(self, ticket: int, timeout_seconds: float) -> bool:
        """Wait until no arrival with a ticket up to `ticket` is still open; False when
        `timeout_seconds` passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._held or next(iter(self._held)) > ticket, timeout_seconds
            )


class ArrivalCounter:
    def __init__(self, app: ASGIApp, arrivals: Arrivals) -> None:
        self.app = app
        self.arrivals = arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in GENERATION_PATHS:
            await self.app(scope, receive, send)
            return
        self.arrivals.begin(scope)
        try:
            await self.app(scope, receive, send)
        finally:
            self.arrivals.end(scope)
            self.arrivals.settle(scope)
