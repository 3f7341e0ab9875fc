"""API keys, checked before anything else reads the request.

Every path needs the key once keys are configured, except `/healthz` (which says only
that the process is alive): the model list, `/readyz` (it shows the model's path),
`/metrics` (request counts and timings), the OpenAPI schema and its pages included.
The check runs before the body is read, so an unauthenticated client learns nothing
from how its body is parsed and costs no more than its headers.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.api.errors import ApiError

OPEN_PATHS = frozenset({"/healthz"})


class ApiKeyGuard:
    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        if not self._authorised(dict(scope["headers"]).get(b"authorization", b"")):
            # close: the body is never read, so the connection cannot be reused
            await ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            ).send(send, close=True)
            return
        await self.app(scope, receive, send)

    def _authorised(self, header: bytes) -> bool:
        scheme, _, token = header.partition(b" ")
        # every key is compared, so the time taken does not say which one nearly matched
        matches = [hmac.compare_digest(token.strip(), key) for key in self.keys]
        return scheme.lower() == b"bearer" and any(matches)
