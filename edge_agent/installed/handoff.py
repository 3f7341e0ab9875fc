"""The agent's side of the launcher's socket hand-over: use the API socket the launcher
holds (so a switch between two agents refuses no connection), and accept nothing until the
model is loaded (so the new agent never answers "loading" while the old one could serve).
"""

from __future__ import annotations

import os
import socket

from edge_agent.installed.launcher import LISTEN_FD_ENV
from edge_agent.program import ListenError

_handed_down = False
# On SIGTERM a handed-down agent keeps serving this long with `Connection: close` (the new
# agent already serves the same socket), so no client reuses a connection being closed.
LINGER_SECONDS = 1.5


def handed_down() -> bool:
    """True when this process serves on a socket the launcher handed it."""
    return _handed_down


def linger_seconds() -> float:
    return LINGER_SECONDS if _handed_down else 0.0


def inherited_listener(host: str, port: int) -> socket.socket | None:
    """The launcher's listening socket, or None when the agent was not given one (then it
    binds its own). Taken once: a second caller binds as usual."""
    global _handed_down
    fd = os.environ.pop(LISTEN_FD_ENV, None)
    if fd is None:
        return None
    try:
        sock = socket.socket(fileno=int(fd))
    except (ValueError, OSError) as exc:
        raise ListenError(
            f"{LISTEN_FD_ENV}={fd} is not an open socket ({exc}): start the agent through "
            "the launcher with --listen, or without that variable"
        ) from exc
    held = sock.getsockname()[1]
    if port not in (0, held):
        sock.detach()
        raise ListenError(
            f"the launcher holds port {held} but the agent is set to listen on {port} ({host}): "
            "make the launcher's --listen and [api] port the same"
        )
    _handed_down = True
    return sock
