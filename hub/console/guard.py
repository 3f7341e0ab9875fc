"""Browser-facing protections of the console: security headers on every response, a refusal
of cross-site form posts, and a per-address limit on login attempts.

The Content-Security-Policy allows scripts, styles, images and requests from the hub itself
only: no inline script, no CDN, no fonts from elsewhere, no framing.
"""

from __future__ import annotations

import time
from collections import deque
from threading import Lock

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
NO_STORE = (b"cache-control", b"no-store")


class SecurityHeaders:
    """Adds HEADERS to every response; pages (not static files) are never cached, so a
    shared computer's back button shows nothing after logout."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = "/static/" in scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += HEADERS if static else [*HEADERS, NO_STORE]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cross_site(headers: dict[str, str], host: str) -> bool:
    """A state-changing request sent by another site's page (checked besides the CSRF token:
    it also covers the login form, before any session exists)."""
    if headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin == "null"
    return origin.partition("://")[2] != host


class AttemptLimit:
    """At most `attempts` per `window_s` per client address (in memory: one hub process)."""

    def __init__(self, attempts: int = 10, window_s: float = 60.0) -> None:
        self.attempts = attempts
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = {}
        self._lock = Lock()

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = self._seen.setdefault(client, deque())
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if len(recent) >= self.attempts:
                return False
            recent.append(now)
            if len(self._seen) > 10_000:  # forget idle addresses
                self._seen = {k: v for k, v in self._seen.items() if v}
            return True
