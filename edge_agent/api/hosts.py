"""Answer only requests addressed to this agent: the defence against DNS rebinding.

A web page can point a name it controls at 127.0.0.1 and have the visitor's browser send
requests to the agent; the browser then says `Host: attacker.example:PORT` and
`Origin: http://attacker.example:PORT`. Requests whose Host (and Origin, when a browser
sends one) name anything other than the agent's own addresses, the name it was told to
bind, or the configured `allowed_hosts` / `cors_origins` are refused with 403 before any
other work. Starlette's TrustedHostMiddleware ignores the port and the Origin and answers
in plain text, hence this one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from edge_agent.api.errors import ApiError
from edge_agent.config import HOST_PATTERN, ApiConfig

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine (any other name may not)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(value: str, scheme: str = "http") -> tuple[str, int] | None:
    """`name[:port]` as a browser writes it -> (lower-case name, port); None if malformed."""
    if not HOST_PATTERN.fullmatch(value):
        return None
    parts = urlsplit(f"{scheme}://{value}")
    try:
        port = parts.port
    except ValueError:  # a port beyond 65535
        return None
    if not parts.hostname:
        return None
    return parts.hostname.rstrip("."), port if port is not None else _DEFAULT_PORTS[scheme]


@dataclass(frozen=True)
class HostPolicy:
    bound_host: str
    allowed_hosts: tuple[str, ...]  # "name" (any port) or "name:port", lower case
    cors_origins: tuple[str, ...]  # lower case

    @classmethod
    def of(cls, api: ApiConfig) -> HostPolicy:
        return cls(api.host.lower().strip("[]").rstrip("."), api.allowed_hosts, api.cors_origins)

    def host_allowed(self, name: str, port: int, local: tuple[str, int]) -> bool:
        """`local` is the address the connection arrived on (the real port, too)."""
        local_host, local_port = local
        own = LOOPBACK_NAMES | {self.bound_host, local_host.lower()}
        if name in own and port == local_port:
            return True
        return name in self.allowed_hosts or f"{name}:{port}" in self.allowed_hosts

    def origin_allowed(self, origin: str, local: tuple[str, int]) -> bool:
        if origin.lower() in self.cors_origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or parts.path or parts.query:
            return False  # "null" (sandboxed pages, files) and anything odd
        host = split_host(parts.netloc, parts.scheme)
        return host is not None and self.host_allowed(*host, local)


class HostGuard:
    def __init__(self, app: ASGIApp, policy: HostPolicy, port: int) -> None:
        self.app = app
        self.policy = policy
        self.port = port  # the configured port: used only when the server does not say

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; the app has no websocket routes
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal.send(send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ApiError | None:
        server = scope.get("server")
        local = (str(server[0]), int(server[1])) if server else (self.policy.bound_host, self.port)
        headers = dict(scope["headers"])
        host_value = headers.get(b"host", b"").decode("latin-1")
        host = split_host(host_value)
        if host is None or not self.policy.host_allowed(*host, local):
            return _forbidden(
                f"this agent does not answer to the host '{host_value[:100]}': if that name is "
                "yours, add it to [api] allowed_hosts in the agent's config",
                "host_not_allowed",
            )
        origin = headers.get(b"origin")
        if origin is not None:
            text = origin.decode("latin-1")
            if not self.policy.origin_allowed(text, local):
                return _forbidden(
                    f"requests from web pages of '{text[:100]}' are not allowed: if that site "
                    "is yours, add its origin to [api] cors_origins in the agent's config",
                    "origin_not_allowed",
                )
        return None


def _forbidden(message: str, code: str) -> ApiError:
    return ApiError(403, message, type_="permission_error", code=code)
