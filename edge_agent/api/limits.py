"""Refuse request bodies over the configured size, or slower than the configured deadline,
before the application sees them.

The body is read here, up to the limit, and handed on whole: a chunked upload that
grows past the limit is refused with 413 rather than surfacing as a parse error. uvicorn
has no timeout for a body that trickles in a byte at a time (it would hold a slot and a
buffer for as long as the client likes), so the whole body must arrive within
`timeout_seconds` of the headers, or the answer is 408 and the connection closes.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edge_agent.api.errors import ApiError


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large().send(send, close=True)
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                first = await self._read(receive)
        except TimeoutError:
            await self._too_slow().send(send, close=True)
            return
        if first is None:
            await self._too_large().send(send, close=True)
            return
        await self.app(scope, _replay([first], receive), send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message (or the disconnect that cut it); None: too large."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body exceeds the limit of {self.max_bytes} bytes",
            code="request_too_large",
        )

    def _too_slow(self) -> ApiError:
        return ApiError(
            408,
            f"the request body did not arrive within {self.timeout_seconds:g} seconds: "
            "send the whole body at once (the agent's [api] request_body_timeout_seconds)",
            code="request_timeout",
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """Hand out the buffered messages first, then whatever the server sends (disconnect)."""
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
