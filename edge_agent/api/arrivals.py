"""Count generation requests that reached the server but not yet the scheduler.

The scheduler waits for these (briefly) before starting a batch, so clients that start
at the same moment are decoded together. Counted from the first byte the application
sees, and uncounted when the request is submitted or ends without a submission.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

GENERATION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})
_KEY = "edge_arrival_open"


class Arrivals:
    def __init__(self) -> None:
        self._open = 0  # touched on the event loop only; read from the decode thread

    def __call__(self) -> int:
        return self._open

    def begin(self, scope: Scope) -> None:
        self._open += 1
        scope.setdefault("state", {})[_KEY] = True

    def end(self, scope: Scope) -> None:
        if scope.get("state", {}).pop(_KEY, False):
            self._open -= 1


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
